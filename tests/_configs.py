"""Pattern configs small enough that tiny test lengths still have several blocks per row (shared by the tests)."""
SMALL_CONFIGS = {
    "full": {},
    "sliding_window": dict(window=3, sink=1),
    "stride_slash": dict(window=2, stride=3, sink=1),
    "dilated": dict(window=6, dilation=1),
    "longnet": dict(segments=(2, 4, 8), dilations=(1, 2, 4)),
    "power": dict(window=2, sink=1),
}
