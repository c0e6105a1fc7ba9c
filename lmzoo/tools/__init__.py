"""Helpers for benchmarks (`lmzoo bench`) and pictures (`lmzoo explain`, --plot); the library never
imports them."""
