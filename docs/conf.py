"""Sphinx configuration of dask-em's documentation.

Build (from the repository root, after ``pip install -e ".[docs]"``)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The gallery (``docs/examples/plot_*.py``) runs at build time on this machine: every
example is small enough that the whole build takes a minute or two on 2 cores. No page
fetches anything over the network (no intersphinx).
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# Document the checked-out tree, whatever copy of dask-em is installed.
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))

import dask_em  # noqa: E402

project = "dask-em"
author = "the dask-em developers"
copyright = "the dask-em developers"
version = release = dask_em.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "readme_section",
    "config_fields",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "examples/README.rst"]
root_doc = "index"

html_theme = "alabaster"
html_theme_options = {
    "description": "Gaussian mixtures by one-pass distributed EM on Dask",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "230px",
}
html_sidebars = {"**": ["about.html", "navigation.html", "searchbox.html"]}
html_title = f"dask-em {release}"

# API reference: a page per public object, from its numpydoc docstring.
autosummary_generate = True
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "none"  # the numpydoc sections say the types
numpydoc_show_class_members = False  # the class template lists members itself
numpydoc_class_members_toctree = False

# Gallery: short runnable examples, executed while the docs build.
sphinx_gallery_conf = {
    "examples_dirs": ["examples"],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": r"/plot_",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    "show_memory": False,
    "min_reported_time": 1,
}


def _skip_metadata_requests(app, what, name, obj, skip, options):
    # scikit-learn generates set_fit_request / set_score_request on its estimators; their
    # docstrings point into scikit-learn's own glossary, which this site has not got.
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_metadata_requests)
