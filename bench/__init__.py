"""fastgan benchmarks (pytest-benchmark suites and paired-ratio scripts)."""
