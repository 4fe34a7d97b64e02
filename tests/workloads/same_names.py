"""Two functions with the same name in one file (two classes' __init__): `top` must count them
apart where it counts entries (their def lines differ)."""


class A:
    def __init__(self):
        pass


class B:
    def __init__(self):
        pass


for _ in range(300):
    A()
for _ in range(700):
    B()
