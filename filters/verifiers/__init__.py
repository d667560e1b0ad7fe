"""Verifiers for rejection sampling: math answers (math-verify, time-bounded on any thread), code in a
sandbox, VQA accuracy / ANLS / multiple choice, and the one final-answer convention (``extract_answer``)."""
