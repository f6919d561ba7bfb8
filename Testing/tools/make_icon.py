"""Draw Resources/Icons/TotalSegmentator.png (128x128): a torso with colour-coded organs.

Drawn at 4x and downsampled for smooth edges. Run: python Testing/tools/make_icon.py
"""
from pathlib import Path

from PIL import Image, ImageDraw

S = 4  # supersampling
SIZE = 128
OUT = Path(__file__).resolve().parents[2] / "Resources" / "Icons" / "TotalSegmentator.png"


def box(x0, y0, x1, y1):
    return [x0 * S, y0 * S, x1 * S, y1 * S]


def main():
    img = Image.new("RGBA", (SIZE * S, SIZE * S), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle(box(4, 4, 124, 124), radius=22 * S, fill=(24, 39, 64, 255))
    skin = (226, 232, 240, 255)
    d.ellipse(box(52, 12, 76, 36), fill=skin)  # head
    d.rounded_rectangle(box(34, 38, 94, 118), radius=20 * S, fill=skin)  # trunk
    d.rounded_rectangle(box(61, 78, 67, 116), radius=2 * S, fill=(148, 163, 184, 255))  # spine
    d.ellipse(box(39, 44, 61, 76), fill=(96, 165, 250, 255))  # right lung
    d.ellipse(box(67, 44, 89, 76), fill=(96, 165, 250, 255))  # left lung
    d.ellipse(box(57, 56, 75, 74), fill=(239, 68, 68, 255))  # heart
    d.polygon([(x * S, y * S) for x, y in ((38, 78), (70, 76), (66, 86), (52, 94), (40, 92))],
              fill=(180, 83, 9, 255))  # liver
    d.ellipse(box(73, 77, 87, 91), fill=(147, 51, 234, 255))  # spleen
    d.ellipse(box(44, 96, 54, 110), fill=(234, 179, 8, 255))  # right kidney
    d.ellipse(box(74, 96, 84, 110), fill=(234, 179, 8, 255))  # left kidney
    OUT.parent.mkdir(parents=True, exist_ok=True)
    img.resize((SIZE, SIZE), Image.LANCZOS).save(OUT)
    print(OUT)


if __name__ == "__main__":
    main()
