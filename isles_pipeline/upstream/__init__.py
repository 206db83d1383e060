"""Watching the upstream PyArrow streaming hang (apache/arrow#45214): the GitHub issue and a
probe of the installed pyarrow, run in a child process."""
