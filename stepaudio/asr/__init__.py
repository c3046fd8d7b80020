"""Speech recognition for the conversation history: Paraformer with the audio tokenizer's model."""
