"""Bit-flip faults: number formats, flip sampling and injection, one trial's plan, batched
campaigns, statistics, the results store, and activations under faults."""
