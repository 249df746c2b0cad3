"""farside's benchmarks; see docs/ for how to run them."""
