"""Call shapes whose function markers differ between CPython versions: a generator resumed and
suspended, a coroutine awaited, an exception unwinding a frame, and a call from C into Python.
Each shape runs between calls of `begin(name)` and `end(name)`, so a trace of function__entry /
function__return can be cut into one section per shape (docs/compatibility.md shows the
sections per version). Prints what sys.setprofile saw of the same functions, as ground truth."""
import asyncio
import sys


def begin(name):
    pass


def end(name):
    pass


def gen():
    yield 1
    yield 2


def consume():
    for _ in gen():
        pass


async def inner():
    await asyncio.sleep(0)
    return 1


async def outer():
    return await inner()


def raiser():
    raise ValueError("unwound")


def catcher():
    try:
        raiser()
    except ValueError:
        pass


def key(x):
    return -x


def from_c():
    sorted([3, 1, 2], key=key)


def shapes():
    loop = asyncio.new_event_loop()
    begin("generator")
    consume()
    end("generator")
    begin("coroutine")
    loop.run_until_complete(outer())
    end("coroutine")
    begin("exception")
    catcher()
    end("exception")
    begin("from_c")
    from_c()
    end("from_c")
    loop.close()


OURS = {"gen", "consume", "inner", "outer", "raiser", "catcher", "key", "from_c"}
seen = []


def profile(frame, event, arg):
    if event in ("call", "return") and frame.f_code.co_name in OURS:
        seen.append(f"{event} {frame.f_code.co_name}")


if __name__ == "__main__":
    shapes()
    sys.setprofile(profile)
    shapes()
    sys.setprofile(None)
    print("setprofile:", " ".join(seen))
