-- wrk: every request names its own item (GET /work/BENCH-<n>), as orders do, so the
-- service it hits passes a different id on to each call it makes.
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/work/BENCH-" .. n)
end
