"""YAML jobs: the config, the runner, checkpoints, outputs, cluster connection and the CLI.

The only layer that imports both the config and the estimators.
"""
