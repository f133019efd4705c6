"""Side-by-side benchmarks: messagebus against the raw clients and peers (DESIGN section 8)."""
