"""Prompt templates of the unified model (Janus-Pro conventions).

Generation:     {bos}<|User|>: {prompt}\\n\\n<|Assistant|>:[reasoning]<begin_of_image>[image tokens]
Understanding:  {bos}<|User|>: <begin_of_image><image_placeholder>*N<end_of_image>\\n{question}
                \\n\\n<|Assistant|>:[answer]
`bos` is the tokenizer's own BOS string (ShapesWorld: "<bos>"; Janus-Pro: its sentence marker).
"""

USER = "<|User|>"
ASSISTANT = "<|Assistant|>"
BOI = "<begin_of_image>"
EOI = "<end_of_image>"
IMAGE_PLACEHOLDER = "<image_placeholder>"


def generation_prompt(prompt: str, bos: str) -> str:
    """Text before the reasoning / `<begin_of_image>` of a text-to-image request."""
    return f"{bos}{USER}: {prompt}\n\n{ASSISTANT}:"


def understanding_prompt(question: str, bos: str, num_image_tokens: int) -> str:
    """Text of an image-question request; the placeholders are replaced by image embeddings."""
    image = BOI + IMAGE_PLACEHOLDER * num_image_tokens + EOI
    return f"{bos}{USER}: {image}\n{question}\n\n{ASSISTANT}:"
