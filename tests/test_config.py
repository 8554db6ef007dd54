"""drawpipe.toml profiles: parsing, validation and choosing one."""

import io

import pytest

from drawpipe.cli.config import ask_profile_on_terminal, choose_profile, load_profiles
from drawpipe.errors import InputFileError, UsageError


def write(tmp_path, text):
    path = tmp_path / "drawpipe.toml"
    path.write_text(text)
    return path


def test_profiles_and_default(tmp_path):
    path = write(tmp_path, '''
default_profile = "mini"
[profiles.mini]
root = "~/share"
servers = ["http://127.0.0.1:7860"]
read_timeout_seconds = 3600
[profiles.book]
servers = ["http://10.0.0.2:7860", "http://127.0.0.1:7860"]
notify_urls = ["https://ntfy.sh/our-farm"]
notify_format = "ntfy"
''')
    profiles, default = load_profiles(path)
    assert default == "mini"
    assert profiles["book"]["servers"][0] == "http://10.0.0.2:7860"
    assert choose_profile(profiles, default, None, ask=lambda names: None)[0] == "mini"
    assert choose_profile(profiles, default, "book", ask=lambda names: None)[0] == "book"


@pytest.mark.parametrize("text, message", [
    ("[profiles.a]\nroot = 3\n", "profile 'a': 'root' must be a folder path"),
    ("[profiles.a]\nservers = []\n", "profile 'a': 'servers' must be a non-empty list of URLs"),
    ("[profiles.a]\nlease_seconds = true\n", "profile 'a': 'lease_seconds' must be a number"),
    ("[profiles.a]\nread_timout_seconds = 3\n",
     "profile 'a': unknown setting 'read_timout_seconds' (did you mean 'read_timeout_seconds'?)"),
    ("[profile.a]\n", "unknown entry 'profile'"),
    ("default_profile = \"x\"\n[profiles.a]\n", "default_profile 'x' is not a [profiles.x] table"),
    ("[profiles.a\n", "invalid TOML"),
    ("[profiles.a]\nnotify_format = \"telegram\"\n",
     "profile 'a': 'notify_format' must be one of json, ntfy, slack, discord"),
    ("[profiles.a]\nnotify_urls = [3]\n", "profile 'a': 'notify_urls' must be a list of URLs"),
])
def test_bad_config_names_file_and_problem(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(InputFileError) as error:
        load_profiles(path)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)


def test_several_profiles_ask_on_a_terminal_or_refuse():
    profiles = {"book": {}, "mini": {}}
    answers = io.StringIO("7\nmini\n")
    out = io.StringIO()
    chosen = choose_profile(profiles, None, None,
                            ask=lambda names: ask_profile_on_terminal(names, answers, out))
    assert chosen[0] == "mini"
    assert "  1. book\n  2. mini\n" in out.getvalue()
    assert "'7' is not one of the profiles above" in out.getvalue()
    with pytest.raises(UsageError, match="choose one with --profile NAME"):
        choose_profile(profiles, None, None, ask=lambda names: None)
    with pytest.raises(UsageError, match=r"unknown profile 'x' \(profiles: book, mini\)"):
        choose_profile(profiles, None, "x", ask=lambda names: None)
