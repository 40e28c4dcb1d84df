"""``mimkit explore``: a local web page that shows what a mimkit model learned.

* :mod:`mimkit.app.explorer` -- what the page computes, as plain functions of a model and an image
  (mask and predict, attention, nearest training images, the run's config, curves and report); no gradio.
* :mod:`mimkit.app.page` -- the Gradio page around it (gradio is imported there, lazily, and nowhere
  else in mimkit: ``pip install 'mimkit[app]'``).

This package stands above the library it shows (``train``, ``eval``, ``viz``, ``data``, ``checkpoint``)
and below ``commands`` (``mimkit explore`` starts the page).
"""
