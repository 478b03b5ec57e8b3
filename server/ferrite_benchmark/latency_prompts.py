"""The fixed single-user prompts of `ferrite-benchmark latency`: three each of coding,
literature and math, written as text to continue (they go to completion endpoints raw, without
a chat template), so that a small model keeps writing instead of stopping early."""

from __future__ import annotations

LATENCY_PROMPTS: tuple[tuple[str, str], ...] = (
    ("coding", "Here is a Python function that parses a CSV file and returns the average of "
               "each numeric column, with comments explaining every step:\n\n```python\n"),
    ("coding", "A step-by-step explanation of how a hash map handles collisions, with a small "
               "example in C:\n\n"),
    ("coding", "The following Rust program reads lines from standard input, counts how often "
               "each word occurs and prints the ten most frequent words:\n\n```rust\n"),
    ("literature", "Chapter One\n\nThe lighthouse keeper had not spoken to another person in "
                   "three winters when the boat appeared on the horizon."),
    ("literature", "An essay on why Shakespeare's tragedies still move audiences today, "
                   "beginning with Hamlet's indecision:\n\n"),
    ("literature", "Once upon a time, in a village between two rivers, there lived a clockmaker "
                   "who could repair anything except his own heart."),
    ("math", "Problem: A train travels 120 km at 60 km/h and then 180 km at 90 km/h. What is "
             "its average speed for the whole trip?\n\nSolution: Let us work through it step by "
             "step."),
    ("math", "Proof that the square root of 2 is irrational, explained for a high-school "
             "student:\n\n"),
    ("math", "To solve the quadratic equation 2x^2 - 7x + 3 = 0, we first recall the quadratic "
             "formula and then"),
)
