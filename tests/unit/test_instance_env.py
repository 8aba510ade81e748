"""The variables every platform gives an instance (`platforms.base.instance_env`)."""

from __future__ import annotations

from turnout.model import Revision
from turnout.platforms.base import instance_env
from turnout.spec import Health, Run


def revision(env: dict[str, str]) -> Revision:
    return Revision(service="shop", version="v7", run=Run(command=["app"], env=env, grace=1),
                    health=Health(), hash="a" * 64)


def test_run_env_is_filled_in_and_the_turnout_variables_are_added() -> None:
    env = instance_env(revision({"URL": "http://127.0.0.1:{port}/{version}/{slot}"}), slot=2, port=41000)
    assert env == {"URL": "http://127.0.0.1:41000/v7/2", "PORT": "41000", "TURNOUT_VERSION": "v7",
                   "TURNOUT_SLOT": "2", "TURNOUT_SERVICE": "shop"}


def test_the_turnout_variables_win_over_run_env_of_the_same_name() -> None:
    env = instance_env(revision({"PORT": "80", "TURNOUT_SLOT": "9", "APP_MODE": "prod"}), slot=0, port=41001)
    assert (env["PORT"], env["TURNOUT_SLOT"], env["APP_MODE"]) == ("41001", "0", "prod")
