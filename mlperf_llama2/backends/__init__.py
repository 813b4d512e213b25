"""Generation backends: each turns prompts (token ids) into greedy outputs (token ids) behind one interface."""
