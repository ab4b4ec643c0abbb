"""A random-interleaving model of the K > 128 chain's synchronisation.

It follows src/cuda/prefill_chain_k256.cu: the ring's `full` / `empty` mbarriers and release
counter, the pair's named barrier, and the Vnew and output partials in buffers of the chunk's
parity. Warps take their loop's steps one at a time in a random order at random speeds; bulk copies
land after random delays. A warp's release is two operations that complete in either order: its
arrival on `empty` lands after a random delay (the warp counts as still reading the stage until
it does), while its relaxed add on the counter takes effect at once, so the add may be seen before
the arrive. The mbarrier waits are try_wait.parity as the kernel uses it: a wait on parity `ph`
spins while (completed phases & 1) == ph, with `ph` kept as the kernel keeps it (flipped when the
stage index wraps to 0); when a wait passes, the model asserts that the completed phases number
exactly c // stages + 1. It checks that every read sees the intended chunk's data, that no stage
is refilled while a warp may still read it, and that nothing deadlocks.

Broken variants it catches (each checked on a mutated copy of this file; every one fails within
its 840 runs, by the assertion named or by the deadlock check):
  - the refiller's wait on `empty` (and its phase assertion) deleted: "refill while reading";
  - the refiller's wait on `empty` with the wrong parity (ph ^ 1): "empty phase";
  - `ph ^= st == 0` replaced by `ph ^= 1`: a full wait passes early ("full phase") or, when the
    fill has already landed, waits on a phase that never comes (the deadlock check, after 10^7
    steps; the usual way it fails);
  - the Vnew partials without parity (one buffer for both chunks): "swap";
  - the output partials without parity: "xo";
  - a warp's release (arrive and add) moved before its last read of the record: "ring Kr/Mqk";
  - the pair's barrier in the chunk loop, or the one after the loop, deleted.
It models the protocol's logic, not the PTX memory model: the orderings (the mbarrier's release
and acquire, the proxy fence before the bulk copy) are argued in the kernel's opening comment, and
a missing fence.proxy.async cannot show here. Run: python3 <this file>.
"""

import random


def run(W, nch, seed):
    rnd = random.Random(seed)
    nst = 4 if W == 8 else 3
    full_phase = [0] * nst  # completed phases of full[stage] (fills landed)
    ring = [None] * nst  # chunk held by each stage (None while a refill is in flight)
    empty_arr = [0] * nst  # arrivals in the current phase of empty[stage]
    empty_phase = [0] * nst  # completed phases of empty[stage]
    done = [0] * nst  # the release counters
    pending = []  # in-flight events: [ticks_left, kind, ...]
    swap = {}  # (par, pair, half) -> chunk
    xo = {}  # (par, warp) -> chunk
    bar_count = {}  # pair -> arrivals in the current generation
    bar_gen = {}
    reading = [set() for _ in range(W)]  # stages a warp may still read (until its arrive lands)

    def half_of(w):
        return (w ^ (w >> 2)) & 1

    for s in range(min(nst, nch)):
        pending.append([rnd.randint(1, 30), "fill", s, s])

    def pair_bar(pair):
        g = bar_gen.setdefault(pair, 0)
        bar_count[pair] = bar_count.get(pair, 0) + 1
        if bar_count[pair] == 2:
            bar_count[pair] = 0
            bar_gen[pair] = g + 1
        return g

    def warp_prog(w):
        pair, half = w >> 1, half_of(w)
        st, ph = 0, 0
        for c in range(nch):
            par = c & 1
            # mbar_wait(full[st], ph): try_wait.parity passes once the phase of parity ph completed
            while (full_phase[st] & 1) == ph:
                yield "wait full"
            assert full_phase[st] == c // nst + 1, ("full phase", w, c, full_phase[st])
            assert ring[st] == c, ("ring", w, c, ring[st])
            reading[w].add(st)
            yield "read -W"
            swap[(par, pair, half)] = c
            yield "write swap"
            g = pair_bar(pair)
            while bar_gen[pair] == g:
                yield "bar"
            assert swap[(par, pair, 0)] == c and swap[(par, pair, 1)] == c, ("swap", w, c)
            yield "read swap"
            assert ring[st] == c, ("ring Kr/Mqk", w, c, ring[st])
            yield "read Kr/Mqk"
            # release: the arrive lands later (the warp may still read until then); the add now
            pending.append([rnd.randint(0, 40), "arrive", st, w])
            yield "arrive"
            old = done[st]
            done[st] += 1
            yield "add"
            if c > 0:
                assert xo[((c - 1) & 1, w ^ 1)] == c - 1, ("xo", w, c)
                yield "store"
            xo[(par, w)] = c
            yield "write xo"
            if (old + 1) % W == 0 and c + nst < nch:
                # mbar_wait(empty[st], ph)
                while (empty_phase[st] & 1) == ph:
                    yield "wait empty"
                assert empty_phase[st] == c // nst + 1, ("empty phase", w, c, empty_phase[st])
                for v in range(W):
                    assert st not in reading[v], ("refill while reading", w, c, v)
                ring[st] = None
                pending.append([rnd.randint(1, 60), "fill", st, c + nst])
                yield "issue"
            st = st + 1 if st + 1 < nst else 0
            ph ^= st == 0
        g = pair_bar(pair)
        while bar_gen[pair] == g:
            yield "bar end"
        if nch > 0:
            assert xo[((nch - 1) & 1, w ^ 1)] == nch - 1, ("xo end", w)
        yield "end"

    progs = {w: warp_prog(w) for w in range(W)}
    speed = [rnd.random() * 0.9 + 0.1 for _ in range(W)]
    steps = 0
    while progs or pending:
        steps += 1
        if steps > 10**7:
            raise RuntimeError("deadlock?")
        for e in list(pending):
            e[0] -= 1
            if e[0] >= 0:
                continue
            pending.remove(e)
            if e[1] == "fill":
                ring[e[2]] = e[3]
                full_phase[e[2]] += 1
            else:  # an arrival on empty[stage] lands
                reading[e[3]].discard(e[2])
                empty_arr[e[2]] += 1
                if empty_arr[e[2]] == W:
                    empty_arr[e[2]] = 0
                    empty_phase[e[2]] += 1
        if not progs:
            continue
        w = rnd.choice(list(progs))
        if rnd.random() > speed[w]:
            continue
        try:
            next(progs[w])
        except StopIteration:
            del progs[w]
    return steps


def main():
    n = 0
    for W in (2, 4, 8):
        for nch in (0, 1, 2, 3, 4, 5, 7, 9, 17, 40):
            for seed in range(30 if nch < 20 else 10):
                run(W, nch, seed * 1000 + nch * 7 + W)
                n += 1
    print("ok", n, "runs")


if __name__ == "__main__":
    main()
