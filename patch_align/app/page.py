"""The web page: a thin gradio layer over ``handlers.AppHandlers`` (imported only when gradio is)."""

from __future__ import annotations

import gradio as gr

from patch_align.app.handlers import AppHandlers, ColumnViews, as_messages


def build_page(handlers: AppHandlers) -> gr.Blocks:
    """The gradio Blocks of the app (not launched)."""
    n = len(handlers.sessions)
    with gr.Blocks(title="patch-align") as page:
        gr.Markdown("# patch-align: see the alignment of every patch")
        columns_state = gr.State([ColumnViews() for _ in range(n)])
        histories_state = gr.State([[] for _ in range(n)])
        with gr.Row():
            upload = gr.File(label="upload an image", type="filepath", elem_id="upload")
            pick = gr.Dropdown(choices=handlers.choices(), value=None, label="or pick one", elem_id="pick")
        status = gr.Markdown("upload or pick an image, or just ask (text-only chat)", elem_id="status")
        with gr.Row():
            question = gr.Textbox(label="question", elem_id="question", scale=4)
            ask = gr.Button("Ask", elem_id="ask", scale=1)
        with gr.Accordion("decoding", open=False):
            temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="temperature (0: greedy)")
            top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top-p")
            max_tokens = gr.Slider(1, 1024, value=64, step=1, label="max new tokens")
            clear = gr.Button("new conversation")
        with gr.Row():
            word = gr.Textbox(label="a word or phrase → heatmap of its cosine over the patches",
                              elem_id="word")
            show = gr.Button("Heatmap", elem_id="show")
        chatbots, patch_images, words, heatmaps, region_images, region_texts = [], [], [], [], [], []
        with gr.Row():
            for index, session in enumerate(handlers.sessions):
                with gr.Column():
                    gr.Markdown(f"### {session.name}\ntemplate `{session.conv_mode}`")
                    chatbots.append(gr.Chatbot(label="chat", elem_id=f"chat{index}", height=260))
                    patch_images.append(
                        gr.Image(label="patches (click one)", type="pil", interactive=False,
                                 elem_id=f"patches{index}")
                    )
                    words.append(gr.Markdown(elem_id=f"words{index}"))
                    heatmaps.append(gr.Image(label="heatmap", type="pil", interactive=False,
                                             elem_id=f"heatmap{index}"))
                    region_images.append(gr.Image(label="regions", type="pil", interactive=False,
                                                  elem_id=f"regions{index}"))
                    region_texts.append(gr.Markdown(elem_id=f"region_scores{index}"))

        def on_image(upload_path, picked):
            columns, message = handlers.load_image(upload_path, picked)
            regions = handlers.region_views(columns)
            return (
                columns, [[] for _ in range(n)], message,
                *handlers.patch_images(columns), *[""] * n, *[None] * n,
                *[image for image, _ in regions], *[text for _, text in regions], *[[] for _ in range(n)],
            )

        image_outputs = [columns_state, histories_state, status, *patch_images, *words, *heatmaps,
                         *region_images, *region_texts, *chatbots]
        upload.change(on_image, [upload, pick], image_outputs)
        pick.change(on_image, [upload, pick], image_outputs)

        def on_select(columns, evt: gr.SelectData):
            x, y = evt.index
            shown = handlers.patch_images(columns)[0]
            updated, texts, message = handlers.select_patch(columns, x / shown.width, y / shown.height)
            return updated, message, *handlers.patch_images(updated), *texts

        for image in patch_images:
            image.select(on_select, [columns_state], [columns_state, status, *patch_images, *words])

        def on_word(columns, phrase):
            images, message = handlers.word_heatmaps(columns, phrase)
            return message, *images

        show.click(on_word, [columns_state, word], [status, *heatmaps])
        word.submit(on_word, [columns_state, word], [status, *heatmaps])

        def on_ask(columns, histories, text, temp, p, tokens):
            for grown, message in handlers.chat(columns, histories, text, temp, p, tokens):
                yield grown, message, *[as_messages(turns) for turns in grown]

        ask_inputs = [columns_state, histories_state, question, temperature, top_p, max_tokens]
        ask.click(on_ask, ask_inputs, [histories_state, status, *chatbots])
        question.submit(on_ask, ask_inputs, [histories_state, status, *chatbots])
        clear.click(lambda: ([[] for _ in range(n)], *[[] for _ in range(n)]), None,
                    [histories_state, *chatbots])
    return page
