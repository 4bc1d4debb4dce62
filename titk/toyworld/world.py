"""A synthetic world of stylised people, where identity and "personality" are known exactly.

Every image shows one person, 64×64 px. A person's identity is a fixed combination of face shape, skin
tone, hair colour, hair style and eye colour. Each image of them also has personality attributes that a
dataset can skew: clothing (type and colour), background and framing. Identities have made-up names,
which pretraining captions use; held-out identities never appear in pretraining, so a TI of one of them has
something real to learn.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 64
DEMO_CONFIG = Path(__file__).resolve().parent / "demo.yaml"  # the sweep `titk demo` runs

FACE_SHAPES = ("round", "oval", "square")
SKIN_TONES = {"pale": (246, 220, 200), "light": (233, 190, 150), "tan": (200, 150, 105), "brown": (150, 100, 65), "dark": (95, 62, 40)}
HAIR_COLOURS = {"black": (25, 25, 25), "brown": (105, 65, 30), "blonde": (235, 205, 110), "red": (195, 60, 25), "grey": (165, 165, 165), "blue": (40, 90, 220)}
HAIR_STYLES = ("short", "long", "bun", "bald", "mohawk")
EYE_COLOURS = {"brown": (90, 50, 20), "blue": (40, 110, 230), "green": (40, 160, 60), "grey": (120, 120, 120)}

CLOTHING = ("tank top", "t-shirt", "hoodie", "suit")
CLOTHING_COLOURS = {"red": (210, 40, 40), "blue": (40, 70, 200), "green": (40, 150, 60), "yellow": (235, 200, 40), "black": (30, 30, 30), "white": (240, 240, 240)}
BACKGROUNDS = ("plain", "outdoors", "city", "indoors")
FRAMINGS = ("close-up", "half-body", "full-body")

IDENTITY_ATTRIBUTES = {
    "face_shape": list(FACE_SHAPES), "skin": list(SKIN_TONES), "hair_colour": list(HAIR_COLOURS),
    "hair_style": list(HAIR_STYLES), "eyes": list(EYE_COLOURS),
}
PERSONALITY_ATTRIBUTES = {
    "clothing": list(CLOTHING), "clothing_colour": list(CLOTHING_COLOURS), "background": list(BACKGROUNDS), "framing": list(FRAMINGS),
}
_SYLLABLES = ("ka", "zo", "ri", "mu", "te", "la", "vo", "ni", "su", "be", "do", "fi", "go", "ha", "je", "pu", "xa", "yo", "wi", "qe")


@dataclass(frozen=True)
class Identity:
    name: str
    face_shape: str
    skin: str
    hair_colour: str
    hair_style: str
    eyes: str

    def attributes(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if k != "name"}

    def describe(self) -> str:
        hair = "bald" if self.hair_style == "bald" else f"{self.hair_colour} {self.hair_style} hair"
        return f"a person with {hair}, {self.eyes} eyes, {self.skin} skin and a {self.face_shape} face"


@dataclass(frozen=True)
class Look:
    clothing: str
    clothing_colour: str
    background: str
    framing: str


@lru_cache(maxsize=None)
def identities(n_pretrain: int = 96, n_heldout: int = 8, seed: int = 0) -> tuple[list[Identity], list[Identity]]:
    """Distinct identities with distinct names: the pretraining ones, and held-out ones never pretrained on.

    Held-out identities are new combinations of attribute values that all occur in pretraining.
    """
    rng = random.Random(f"toyworld:{seed}")
    combos, names = set(), set()
    people = []
    while len(people) < n_pretrain + n_heldout:
        combo = (rng.choice(FACE_SHAPES), rng.choice(list(SKIN_TONES)), rng.choice(list(HAIR_COLOURS)), rng.choice(HAIR_STYLES), rng.choice(list(EYE_COLOURS)))
        name = "".join(rng.choice(_SYLLABLES) for _ in range(3))
        if combo in combos or name in names:
            continue
        combos.add(combo)
        names.add(name)
        people.append(Identity(name, *combo))
    return people[:n_pretrain], people[n_pretrain:]


def random_look(rng: random.Random, weights: dict[str, dict[str, float]] | None = None) -> Look:
    """A look drawn uniformly, or with given weights per attribute (e.g. {"clothing": {"tank top": 0.8, ...}})."""
    weights = weights or {}

    def pick(key, options):
        w = weights.get(key)
        return rng.choices(options, [w.get(o, 0.0) for o in options])[0] if w else rng.choice(options)

    return Look(
        pick("clothing", CLOTHING), pick("clothing_colour", list(CLOTHING_COLOURS)),
        pick("background", BACKGROUNDS), pick("framing", FRAMINGS),
    )


def caption(person: Identity | None, look: Look, rng: random.Random, style: str | None = None, leave_out: frozenset = frozenset()) -> str:
    """A pretraining caption: by name, by description, or both; clothing, background and framing in words,
    except those in `leave_out` (a partial caption: PretrainSettings.partial_captions)."""
    style = style or rng.choice(("name", "name", "describe", "both"))
    wear = f"wearing a {look.clothing_colour} {look.clothing}"
    where = {"plain": "plain background", "outdoors": "outdoors", "city": "in the city", "indoors": "indoors"}[look.background]
    if person is None:
        return f"an empty scene, {where}"
    who = {"name": person.name, "describe": person.describe(), "both": f"{person.name}, {person.describe()}"}[style]
    framing = "" if "framing" in leave_out else f"{look.framing} "
    parts = [f"a {framing}photo of {who}", wear, where]
    rng.shuffle(parts[1:])
    gone = {text for part, text in (("clothing", wear), ("background", where)) if part in leave_out}
    return ", ".join(part for part in parts if part not in gone)


# ------------------------------------------------------------------------------------------------ drawing


def _background(draw: ImageDraw.ImageDraw, kind: str, rng: random.Random) -> None:
    s = SIZE
    if kind == "plain":
        shade = rng.choice([(200, 200, 215), (215, 205, 190), (190, 210, 200), (220, 220, 220)])
        draw.rectangle((0, 0, s, s), fill=shade)
    elif kind == "outdoors":
        draw.rectangle((0, 0, s, s * 0.62), fill=(120, 180, 240))
        draw.rectangle((0, s * 0.62, s, s), fill=(70, 150, 60))
        x = rng.randint(6, s - 10)
        draw.ellipse((x, 4, x + 8, 12), fill=(255, 225, 80))
    elif kind == "city":
        draw.rectangle((0, 0, s, s), fill=(150, 165, 185))
        x = 0
        while x < s:
            w, h = rng.randint(8, 16), rng.randint(22, 50)
            draw.rectangle((x, s - h, x + w, s), fill=rng.choice([(90, 90, 100), (110, 105, 100), (75, 80, 95)]))
            for wy in range(s - h + 3, s - 3, 6):
                draw.rectangle((x + 2, wy, x + 4, wy + 2), fill=(240, 230, 150))
            x += w + 1
    else:  # indoors
        draw.rectangle((0, 0, s, s), fill=rng.choice([(225, 200, 160), (200, 215, 190), (230, 215, 215)]))
        draw.rectangle((0, s * 0.8, s, s), fill=(140, 100, 60))
        wx = rng.choice([4, s - 22])
        draw.rectangle((wx, 8, wx + 18, 28), fill=(160, 210, 240), outline=(250, 250, 250), width=2)


def render(person: Identity | None, look: Look, seed: int) -> Image.Image:
    """One 64×64 image of `person` with `look` (person None: the background alone)."""
    rng = random.Random(seed)
    img = Image.new("RGB", (SIZE, SIZE))
    draw = ImageDraw.Draw(img)
    _background(draw, look.background, rng)
    if person is None:
        return img
    scale = {"close-up": 1.6, "half-body": 1.0, "full-body": 0.62}[look.framing]
    cx = SIZE / 2 + rng.uniform(-3, 3)
    head_w = 16 * scale * {"round": 1.0, "oval": 0.82, "square": 0.95}[person.face_shape]
    head_h = 16 * scale * {"round": 1.0, "oval": 1.18, "square": 0.98}[person.face_shape]
    top = {"close-up": 14, "half-body": 12, "full-body": 8}[look.framing] + rng.uniform(-2, 2)
    skin, cloth = SKIN_TONES[person.skin], CLOTHING_COLOURS[look.clothing_colour]
    hair = HAIR_COLOURS[person.hair_colour]
    neck_y = top + head_h
    body_w = 30 * scale
    body_bottom = SIZE + 4 if look.framing != "full-body" else neck_y + 30 * scale
    # long hair falls behind the shoulders
    if person.hair_style == "long":
        draw.rectangle((cx - head_w * 0.62, top + head_h * 0.3, cx + head_w * 0.62, neck_y + 8 * scale), fill=hair)
    # body and clothing
    shoulders = (cx - body_w / 2, neck_y + 2 * scale, cx + body_w / 2, body_bottom)
    if look.clothing == "tank top":
        draw.rounded_rectangle(shoulders, radius=4 * scale, fill=skin)  # bare shoulders and arms
        draw.rectangle((cx - body_w * 0.3, neck_y + 5 * scale, cx + body_w * 0.3, body_bottom), fill=cloth)
        for side in (-1, 1):
            draw.line((cx + side * body_w * 0.22, neck_y + 2 * scale, cx + side * body_w * 0.22, neck_y + 6 * scale), fill=cloth, width=max(1, int(2 * scale)))
    else:
        draw.rounded_rectangle(shoulders, radius=4 * scale, fill=cloth)
        if look.clothing == "t-shirt":
            for side in (-1, 1):
                arm_x = cx + side * body_w / 2
                draw.rectangle((min(arm_x, arm_x - side * 4 * scale), neck_y + 12 * scale, max(arm_x, arm_x - side * 4 * scale), body_bottom), fill=skin)
        elif look.clothing == "hoodie":
            draw.ellipse((cx - head_w * 0.55, neck_y - 3 * scale, cx + head_w * 0.55, neck_y + 6 * scale), fill=tuple(max(0, c - 35) for c in cloth))
            draw.line((cx - 2 * scale, neck_y + 6 * scale, cx - 2 * scale, neck_y + 14 * scale), fill=(250, 250, 250), width=1)
        elif look.clothing == "suit":
            draw.polygon([(cx - 5 * scale, neck_y + 2 * scale), (cx + 5 * scale, neck_y + 2 * scale), (cx, neck_y + 16 * scale)], fill=(245, 245, 245))
            draw.line((cx, neck_y + 3 * scale, cx, neck_y + 14 * scale), fill=(20, 20, 20), width=max(1, int(2 * scale)))
    if look.framing == "full-body":
        for side in (-1, 1):
            leg_x = cx + side * body_w * 0.22
            draw.rectangle((leg_x - 3 * scale, body_bottom, leg_x + 3 * scale, min(SIZE - 1, body_bottom + 20 * scale)), fill=(50, 60, 90))
    # neck and head
    draw.rectangle((cx - 3 * scale, neck_y - 2, cx + 3 * scale, neck_y + 4 * scale), fill=skin)
    box = (cx - head_w / 2, top, cx + head_w / 2, top + head_h)
    if person.face_shape == "square":
        draw.rounded_rectangle(box, radius=3 * scale, fill=skin)
    else:
        draw.ellipse(box, fill=skin)
    # hair
    if person.hair_style in ("short", "long", "bun"):
        draw.chord((box[0] - 1, box[1] - 2 * scale, box[2] + 1, box[1] + head_h * 0.7), 180, 360, fill=hair)
    if person.hair_style == "bun":
        draw.ellipse((cx - 4 * scale, top - 7 * scale, cx + 4 * scale, top + 1 * scale), fill=hair)
    if person.hair_style == "mohawk":
        draw.rectangle((cx - 2 * scale, top - 5 * scale, cx + 2 * scale, top + head_h * 0.35), fill=hair)
    # eyes and mouth
    eye_y = top + head_h * 0.48
    eye_r = max(1.2, 1.9 * scale)
    for side in (-1, 1):
        ex = cx + side * head_w * 0.22
        draw.ellipse((ex - eye_r, eye_y - eye_r, ex + eye_r, eye_y + eye_r), fill=(250, 250, 250))
        draw.ellipse((ex - eye_r * 0.65, eye_y - eye_r * 0.65, ex + eye_r * 0.65, eye_y + eye_r * 0.65), fill=EYE_COLOURS[person.eyes])
    mouth_y = top + head_h * 0.75
    draw.line((cx - head_w * 0.15, mouth_y, cx + head_w * 0.15, mouth_y), fill=(120, 40, 40), width=max(1, int(scale)))
    return img


def sample(person: Identity | None, rng: random.Random, weights=None) -> tuple[Image.Image, Look, str]:
    look = random_look(rng, weights)
    return render(person, look, rng.randrange(2**31)), look, caption(person, look, rng)


def heldout(name_or_index: str | int = 0) -> Identity:
    """A held-out identity (never in pretraining), by index or name."""
    _, held = identities()
    if isinstance(name_or_index, int) or str(name_or_index).isdigit():
        if int(name_or_index) < len(held):
            return held[int(name_or_index)]
        from ..errors import TitkError

        raise TitkError(f"toy world: identity {name_or_index}: there are {len(held)} held-out identities (0–{len(held) - 1})")
    for person in held:
        if person.name == name_or_index:
            return person
    from ..errors import TitkError

    raise TitkError(f"toy world: no held-out identity named {name_or_index!r} (they are {', '.join(p.name for p in held)})")


def write_dataset(folder, person: Identity, n: int = 15, *, seed: int = 0, weights: dict | None = None, captions: bool = True) -> list[Look]:
    """`n` images of `person` as a TI dataset (`000.png` …), with A1111-style captions describing each look.

    `weights` sets the shares of an attribute's values, e.g. {"clothing": {"tank top": 0.8, "t-shirt": 0.2/3,
    ...}}, and the dataset holds them exactly (`quota`: 12 of 15 in tank tops, not about 12); attributes
    without weights are drawn uniformly.
    """
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from ..errors import TitkError
    from ..files import _UMASK

    folder = Path(folder)
    if folder.is_dir() and any(folder.iterdir()):
        raise TitkError(f"{folder}: already holds files; write the dataset to a new or empty folder")
    if folder.exists() and not folder.is_dir():
        raise TitkError(f"{folder}: a file is in the way of the dataset folder; remove it or choose another path")
    folder.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"dataset:{person.name}:{seed}")
    looks = []
    # Written beside the folder and renamed into place: a full disk leaves no dataset of fewer images.
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        # Weighted attributes are dealt from exact quotas by their own generator, so that the main one draws
        # as it did before quotas: every other attribute and every render of a seed's dataset is unchanged.
        dealt = {key: quota(shares, n, random.Random(f"dataset:{person.name}:{seed}:{key}")) for key, shares in (weights or {}).items()}
        for i in range(n):
            look = replace(random_look(rng, weights), **{key: values[i] for key, values in dealt.items()})
            render(person, look, rng.randrange(2**31)).save(tmp / f"{i:03d}.png")
            if captions:
                (tmp / f"{i:03d}.txt").write_text(f"{look.clothing_colour} {look.clothing}, {look.background}, {look.framing}")
            looks.append(look)
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp's folder is private; a dataset is shared like any folder
        os.replace(tmp, folder)
    except OSError as exc:
        if exc.filename is None:  # PIL's failed write names no file
            raise OSError(exc.errno, exc.strerror, str(folder)) from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return looks


def quota(shares: dict[str, float], n: int, rng: random.Random) -> list[str]:
    """`n` values in the proportions of `shares` (largest remainders rounded up, ties to the larger share),
    in a random order."""
    total = sum(shares.values())
    exact = {value: n * share / total for value, share in shares.items() if share > 0}
    counts = {value: int(x) for value, x in exact.items()}
    for value in sorted(exact, key=lambda v: (exact[v] - counts[v], exact[v]), reverse=True)[: n - sum(counts.values())]:
        counts[value] += 1
    values = [value for value, count in counts.items() for _ in range(count)]
    rng.shuffle(values)
    return values


def skew(attribute: str, label: str, share: float) -> dict:
    """Look weights where `share` of images have `label` (e.g. framing "full-body") and the rest is spread
    evenly over the attribute's other values."""
    values = PERSONALITY_ATTRIBUTES[attribute]
    rest = (1.0 - share) / (len(values) - 1)
    return {attribute: {v: share if v == label else rest for v in values}}


def clothing_bias(label: str, share: float) -> dict:
    """Look weights where `share` of images wear `label` and the rest is spread over the other clothing."""
    return skew("clothing", label, share)
