"""One declarative file per Hugging Face family."""
