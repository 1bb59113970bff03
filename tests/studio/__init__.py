"""Tests of the painting studio (`spade-deploy paint`): its HTTP API against a real server process, and the page in a
real headless Chromium."""
