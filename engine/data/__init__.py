"""SynthTalk and the data tools: speech, visemes, portraits, motion, dataset shards, video clips."""
