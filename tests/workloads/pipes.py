"""A three-process tree talking over pipes: the parent sends i to its child, which adds one
and passes it to a grandchild, which squares it and answers straight to the parent. The parent
prints a running total, which after n rounds must equal sum((k+1)^2 for k in 1..n)."""
import os
import time

p2c_r, p2c_w = os.pipe()
c2g_r, c2g_w = os.pipe()
g2p_r, g2p_w = os.pipe()

if os.fork() == 0:  # child
    if os.fork() == 0:  # grandchild
        src, dst = os.fdopen(c2g_r), os.fdopen(g2p_w, "w")
        for line in src:
            dst.write(f"{int(line) ** 2}\n")
            dst.flush()
        os._exit(0)
    src, dst = os.fdopen(p2c_r), os.fdopen(c2g_w, "w")
    for line in src:
        dst.write(f"{int(line) + 1}\n")
        dst.flush()
    os._exit(0)

out, back = os.fdopen(p2c_w, "w"), os.fdopen(g2p_r)
total = 0
i = 0
while True:
    i += 1
    out.write(f"{i}\n")
    out.flush()
    total += int(back.readline())
    print(f"round {i} total {total}", flush=True)
    time.sleep(0.1)
