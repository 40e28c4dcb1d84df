"""The Gradio page of ``mimkit explore`` around an :class:`~mimkit.app.explorer.Explorer`.

gradio is imported here, inside functions, and nowhere else in mimkit (``pip install 'mimkit[app]'``).
Every event is also an API endpoint (``gradio_client``: ``/image``, ``/mask_and_predict``, ``/attention``,
``/neighbours``), with the same inputs as the page. Bad input (an unreadable upload, a patch outside the
grid, a pixel reconstruction asked of a model without one, ...) is one line on the page and one line in
the log, never a stack trace.
"""
from __future__ import annotations

import functools
import logging
import os
import time

from .explorer import PATCHES, VIEWS, Explorer, first_line

log = logging.getLogger("mimkit.explore")
EXTRA = "pip install 'mimkit[app]'"


def require_gradio():
    """The gradio module, or one clear line naming the extra that installs it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local page: nothing is sent anywhere
    try:
        import gradio as gr
    except ImportError as e:
        raise ValueError(f"mimkit explore needs gradio, which is not installed ({first_line(e)}): {EXTRA}") from None
    return gr


def error_line(msg: str) -> str:
    return f"**error:** {msg}"


def guarded(n_outputs: int, note_at: int, info_at: int | None = None):
    """Wrap a page function: any error becomes one line in the log and the same line on the page (at
    output ``note_at``; ``{"error": line}`` at ``info_at``), the other outputs left empty."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                out = fn(*args, **kwargs)
            except Exception as e:  # the page must answer with one line, whatever went wrong
                expected = isinstance(e, (ValueError, FileNotFoundError, KeyError, TypeError))
                msg = first_line(e) if expected else f"{type(e).__name__}: {first_line(e)}"
                log.error("%s: %s", fn.__name__, msg)
                outs = [None] * n_outputs
                outs[note_at] = error_line(msg)
                if info_at is not None:
                    outs[info_at] = {"error": msg}
                return tuple(outs)
            log.info("%s answered in %.2f s", fn.__name__, time.perf_counter() - t0)
            return out

        return run

    return wrap


def build_page(ex: Explorer):
    """The page (a ``gradio.Blocks``) for ``ex``."""
    gr = require_gradio()
    titles = ex.panel_titles()
    n_test = len(ex.split("test")[0])
    depth, heads = ex.depth, ex.heads

    def current(source, index, upload):
        return ex.image(source or "dataset", 0 if index is None else int(index), upload)

    @guarded(2, 0)
    def show_image(source, index, upload):
        x, caption = current(source, index, upload)
        return caption, ex.show(x)

    @guarded(7, 5, 6)
    def mask_and_predict(source, index, upload, masking, ratio, seed, patches, view):
        x, caption = current(source, index, upload)
        r = ex.mask_and_predict(x, masking, float(ratio), int(seed or 0), patches, view or "auto")
        return (caption, *r["panels"], r["note"], r["info"])

    @guarded(4, 2, 3)
    def attention(source, index, upload, block, head):
        x, caption = current(source, index, upload)
        r = ex.attention(x, int(block) - 1, head)
        return caption, r["picture"], r["note"], r["info"]

    @guarded(5, 1, 4)
    def neighbours(source, index, upload, k, progress=gr.Progress(track_tqdm=True)):
        x, caption = current(source, index, upload)
        r = ex.neighbours(x, int(k), progress=True)
        return caption, r["note"], r["encoder"], r["pixels"], r["info"]

    def click_patch(patches, evt: gr.SelectData):
        """A click on the original toggles that patch in the list of patches to hide."""
        try:
            i = ex.patch_at(*evt.index[:2])
        except (ValueError, TypeError) as e:
            log.error("click: %s", first_line(e))
            return patches, PATCHES
        chosen = set(str(patches or "").replace(",", " ").split())
        chosen ^= {str(i)}
        return ", ".join(sorted(chosen, key=lambda t: int(t) if t.isdigit() else -1)), PATCHES

    # events that are not API endpoints (gradio 6 names it api_visibility, gradio 5 api_name=False)
    private = {"api_visibility": "private"} if int(gr.__version__.split(".")[0]) >= 6 else {"api_name": False}
    run = ex.run_summary()
    with gr.Blocks(title=f"mimkit explore: {ex.method}") as page:
        gr.Markdown(f"## mimkit explore\n{ex.describe()}", elem_id="about")
        with gr.Row():
            source = gr.Radio(["dataset", "upload"], value="dataset", label="image from", elem_id="source")
            index = gr.Number(value=0, precision=0,
                              label=f"test image (0 to {n_test - 1})", elem_id="index")
            upload = gr.File(label=f"or upload an image: any size or mode, resized and converted to the model's "
                                   f"{ex.size}x{ex.size} {'grayscale' if ex.chans == 1 else 'RGB'} input",
                             type="filepath", height=140, elem_id="upload")
        image_note = gr.Markdown(elem_id="image-note")
        with gr.Tabs():
            with gr.Tab("Mask and predict", elem_id="tab-mask"):
                with gr.Row():
                    masking = gr.Dropdown(ex.maskings(), value=ex.default_masking(), label="masking",
                                          elem_id="masking")
                    ratio = gr.Slider(0.05, 0.95, value=ex.default_ratio(), step=0.01, label="mask ratio",
                                      elem_id="ratio")
                    seed = gr.Number(value=0, precision=0, label="seed (the same seed, the same mask)",
                                     elem_id="seed")
                    view = gr.Radio(list(VIEWS), value="auto", label="show (pixels: MAE, SimMIM only)",
                                    elem_id="view")
                    patches = gr.Textbox("", label=f"patches to hide with masking '{PATCHES}': click the original, "
                                                   f"or type numbers 0 to {ex.num_patches - 1}", elem_id="patches")
                go = gr.Button("Mask and predict", variant="primary", elem_id="mask-and-predict")
                with gr.Row():
                    pics = [gr.Image(label=t if i else f"{t} (click patches to hide them)", format="png",
                                     interactive=False, elem_id=f"panel-{i}") for i, t in enumerate(titles)]
                mp_note = gr.Markdown(elem_id="mp-note")
                mp_info = gr.JSON(label="the numbers (mask: 1 = hidden, row by row)", elem_id="mp-info")
            with gr.Tab("Attention", elem_id="tab-attention"):
                with gr.Row():
                    block = gr.Slider(1, max(depth, 1), value=max(depth, 1), step=1, label=f"block (1 to {depth})",
                                      elem_id="block")
                    head = gr.Dropdown(["mean", *[str(h + 1) for h in range(heads)]], value="mean", label="head",
                                       elem_id="head")
                att_go = gr.Button("Show attention", elem_id="show-attention")
                att_pic = gr.Image(label="attention over the image", format="png", interactive=False,
                                   elem_id="attention")
                att_note = gr.Markdown(elem_id="att-note")
                att_info = gr.JSON(label="the map (patch grid)", elem_id="att-info")
            with gr.Tab("Neighbours", elem_id="tab-neighbours"):
                k = gr.Slider(1, 32, value=8, step=1, label="neighbours", elem_id="k")
                nb_go = gr.Button("Find the nearest training images", elem_id="find-neighbours")
                nb_note = gr.Markdown("The training images' features are computed on the first search (a progress "
                                      "bar), then kept.", elem_id="nb-note")
                nb_enc = gr.Gallery(label="under the encoder", columns=8, height="auto", elem_id="nb-encoder")
                nb_raw = gr.Gallery(label="under raw pixels", columns=8, height="auto", elem_id="nb-pixels")
                nb_info = gr.JSON(label="indices and similarities", elem_id="nb-info")
            with gr.Tab("The run", elem_id="tab-run"):
                gr.Markdown(run["note"], elem_id="run-note")
                if run["curves"] is not None:
                    gr.Image(run["curves"], label="loss and validation curves", format="png", interactive=False,
                             elem_id="curves")
                if run["report"]:
                    gr.Markdown("### Quality report\n" + run["report"], elem_id="report")
                if run["report_png"]:
                    gr.Image(run["report_png"], label="report.png", interactive=False, elem_id="report-png")
                gr.Code(run["config"], language="yaml" if run["config_name"].endswith(".yaml") else "json",
                        label=run["config_name"], interactive=False, elem_id="config")

        where = [source, index, upload]
        for ev in (source.change, index.change, upload.change):
            ev(show_image, where, [image_note, pics[0]], queue=False, **private)
        page.load(show_image, where, [image_note, pics[0]], api_name="image")
        go.click(mask_and_predict, [*where, masking, ratio, seed, patches, view],
                 [image_note, *pics, mp_note, mp_info], api_name="mask_and_predict")
        pics[0].select(click_patch, [patches], [patches, masking], **private)
        att_go.click(attention, [*where, block, head], [image_note, att_pic, att_note, att_info],
                     api_name="attention")
        nb_go.click(neighbours, [*where, k], [image_note, nb_note, nb_enc, nb_raw, nb_info], api_name="neighbours")
    return page


def serve(ex: Explorer, host: str = "127.0.0.1", port: int = 7860, block: bool = True, started: float | None = None):
    """Start the page on ``host:port`` (blocks until stopped unless ``block=False``)."""
    page = build_page(ex)
    page.queue(default_concurrency_limit=1)  # one model, one request at a time
    try:
        page.launch(server_name=host, server_port=int(port), share=False, inbrowser=False, show_error=False,
                    prevent_thread_lock=True, quiet=True)
    except OSError as e:  # the port is taken, or the host is not this machine's
        raise ValueError(f"cannot serve on {host}:{port} ({first_line(e)}); choose another --port or --host") from None
    took = f" (ready {time.perf_counter() - started:.1f} s after start)" if started is not None else ""
    print(f"mimkit explore: {ex.method} at http://{host}:{port}{took}; Ctrl-C stops it", flush=True)
    if block:
        try:
            page.block_thread()
        except KeyboardInterrupt:
            pass
        finally:
            page.close()
    return page
