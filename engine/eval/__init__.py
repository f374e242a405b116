"""Evaluation: networks trained on SynthTalk that read a video (mouth opening, identity), and the metrics
built on them (lip sync, identity similarity, drift)."""
