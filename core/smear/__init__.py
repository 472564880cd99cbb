"""A whole field, end to end: crop the detected red cells, classify them, count, grade and draw
(`analysis`); the one place counts, percentages and ICSH grades are computed (`counting`,
`grading`)."""
