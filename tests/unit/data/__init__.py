"""Fixture builders shared by the unit tests of tuner's data, env and evaluation modules."""
