"""What ships after training: the exported artifact and its recommendations (no LLM)."""
