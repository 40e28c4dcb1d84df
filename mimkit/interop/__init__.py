"""Interop with Hugging Face ``transformers`` (``hf``) and ``timm`` (``timm``)."""
