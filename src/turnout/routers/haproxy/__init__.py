"""HAProxy as turnout's router: HAProxy carries the requests, turnout only steers it.

`config` renders haproxy.cfg (pool backends of pre-declared server slots), `process` starts,
reloads and stops HAProxy in master-worker mode, `runtime` talks to its runtime API (server
slots, map swaps, counters), and `router` is the `Router` seam over all three. The Lua that
buckets users into pools and the map entries it reads are `lua/turnout.lua` and `maps`.
"""
