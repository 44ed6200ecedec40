"""The benchmark wing: time backends on the same audio and gate every speed claim on the transcript."""
