"""The serving model's request check (fsl.data.requests): every bad row is named with its field,
and image budgets are held from the headers, before decoding."""

import base64
import io
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fsl.data.requests import RequestError, check_request
from tests.test_bad_inputs import bomb_png


def png(side: int = 8, mode: str = "RGB") -> str:
    buffer = io.BytesIO()
    Image.new(mode, (side, side)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def frame(*rows) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=["role", "label", "image"])


GOOD = [("support", "cat", png()), ("support", "dog", png()), ("query", "", png())]


def test_a_good_request_keeps_order_and_accepts_any_case_and_spacing_of_role():
    request = check_request(frame((" SUPPORT", " cat ", png()), ("Support", "dog", png()), ("Query ", None, png()),
                                  ("query", "", png())))
    assert request.support_labels == ["cat", "dog"] and len(request.query_images) == 2


@pytest.mark.parametrize("rows, needle", [
    ([*GOOD, ("suport", "x", png())], "row 3, field 'role': 'suport' is not 'support' or 'query'"),
    ([*GOOD, (None, "x", png())], "row 3, field 'role': missing (expected 'support' or 'query')"),
    ([("support", None, png()), *GOOD], "row 0, field 'label': a support row needs a non-empty string label"),
    ([("support", float("nan"), png()), *GOOD], "row 0, field 'label'"),
    ([("support", "  ", png()), *GOOD], "row 0, field 'label'"),
    ([*GOOD, ("query", "", "not base64!")], "row 3, field 'image': not base64"),
    ([*GOOD, ("query", "", base64.b64encode(b"plain text").decode())], "row 3, field 'image': not a readable image"),
    ([*GOOD, ("query", "", None)], "row 3, field 'image': no image"),
    ([("support", "cat", png()), ("support", "dog", png())], "at least one row with role 'support'"),
    ([("query", "", png())], "at least one row with role 'support'"),
    # W5: a query's label was answered with the label ignored
    ([*GOOD, ("query", "cat", png())], "row 3, field 'label': a query row takes no label (the answer is the "
                                       "predicted one; leave it empty), got 'cat'"),
])
def test_each_bad_row_is_named_with_its_field(rows, needle):
    with pytest.raises(RequestError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        check_request(frame(*rows))


def test_columns_are_checked():
    with pytest.raises(RequestError, match="no column 'role'"):
        check_request(pd.DataFrame({"image": [png()]}))
    with pytest.raises(RequestError, match="unknown column 'labels'"):
        check_request(pd.DataFrame({"role": ["support"], "labels": ["a"], "image": [png()]}))


def test_image_budgets_are_held_from_the_header_within_a_second(tmp_path):
    huge = base64.b64encode(bomb_png(tmp_path / "bomb.png", side=9400).read_bytes()).decode()
    started = time.monotonic()
    with pytest.raises(RequestError, match="row 1, field 'image': 9400x9400 pixels is over the budget"):
        check_request(frame(("support", "a", png()), ("query", "", huge)))
    assert time.monotonic() - started < 1.0
    rows = [("support", "a", png(64)), *[("query", "", png(64)) for _ in range(5)]]
    with pytest.raises(RequestError, match="row 4, field 'image': the request would decode to over 50,000 bytes"):
        check_request(frame(*rows), max_request_bytes=50_000)  # 64 x 64 x 3 = 12,288 per image
    assert len(check_request(frame(*rows), max_request_bytes=6 * 12_288).query_images) == 5


def test_line_wrapped_base64_is_accepted_and_budgets_count_bytes_per_band():
    wrapped = base64.encodebytes(base64.b64decode(png(64))).decode()  # a newline every 76 characters
    assert "\n" in wrapped
    assert len(check_request(frame(("support", "a", wrapped), ("query", "", wrapped))).query_images) == 1
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((64, 64), dtype=np.float32)).save(buffer, format="TIFF")
    wide = base64.b64encode(buffer.getvalue()).decode()  # mode F: 4 bytes per pixel
    with pytest.raises(RequestError, match="row 1, field 'image': the request would decode to over"):
        check_request(frame(("support", "a", png(64)), ("query", "", wide)),
                      max_request_bytes=64 * 64 * 3 + 64 * 64 * 2)
