"Resources against real things: a Slack-shaped HTTP server, a real MCP mail server over stdio, this package's source."
import json, os, subprocess, sys, tarfile, io, threading, time, warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs
import pytest
from cartridges.models import default_tokenizer
from cartridges.resources import (ChunkSampler, DirectoryResource, GmailResource, JSONResource, LaTeXResource,
                                  SlackResource, TextFileResource, TextResource)

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture(scope="module")
def tok(): return default_tokenizer()

# ---------------------------------------------------------------- Slack Web API, served locally in Slack's shapes
T0 = 1764849600.0
def _m(i, user, text, **kw): return {"type": "message", "user": user, "text": text, "ts": f"{T0 + 60 * i:.6f}", **kw}

class FakeSlack:
    "Answers users.list, conversations.list/.history/.replies like Slack: cursors, ok/error, one 429 with Retry-After."
    def __init__(self):
        self.calls, self.times, self.rate_limit_once = [], [], True
        self.users = [[{"id": "U1", "name": "ann", "profile": {"real_name": "Ann Lee"}}],
                      [{"id": "U2", "name": "bo", "profile": {"real_name": "Bo Chen"}}]]
        self.channels = [{"id": "C1", "name": "general"}, {"id": "C2", "name": "launch"}]
        parent = _m(0, "U1", "Launch on Friday? <@U2>", thread_ts=f"{T0:.6f}", reply_count=2)
        self.history = {"C1": [[_m(10, "U2", "Lunch at noon.")]],
                        "C2": [[_m(30, "U2", "Budget is $12k."), _m(20, "U1", "", subtype="channel_join")], [parent]]}  # newest first
        self.replies = {f"{T0:.6f}": [[parent, _m(1, "U2", "Confirmed, Pier 7.", thread_ts=f"{T0:.6f}")],
                                      [_m(2, "U1", "Thanks!", thread_ts=f"{T0:.6f}")]]}

    def answer(self, method, p):
        page = int(p.get("cursor") or 0)
        def paged(pages, key): return {"ok": True, key: pages[page], "response_metadata": {"next_cursor": str(page + 1) if page + 1 < len(pages) else ""}}
        if method == "users.list": return paged(self.users, "members")
        if method == "conversations.list": return paged([self.channels], "channels")
        if method == "conversations.history":
            if p["channel"] not in self.history: return {"ok": False, "error": "channel_not_found"}
            return {**paged(self.history[p["channel"]], "messages"), "has_more": page + 1 < len(self.history[p["channel"]])}
        if method == "conversations.replies": return paged(self.replies[p["ts"]], "messages")
        return {"ok": False, "error": "unknown_method"}

@pytest.fixture
def slack_server():
    fake = FakeSlack()
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            method = self.path.rsplit("/", 1)[-1]
            params = {k: v[0] for k, v in parse_qs(self.rfile.read(int(self.headers["Content-Length"] or 0)).decode()).items()}
            fake.calls.append((method, params)); fake.times.append(time.monotonic())
            if method == "conversations.history" and fake.rate_limit_once:
                fake.rate_limit_once = False
                body, code, headers = {"ok": False, "error": "ratelimited"}, 429, {"Retry-After": "1"}
            elif self.headers.get("Authorization") != "Bearer xoxb-test": body, code, headers = {"ok": False, "error": "invalid_auth"}, 200, {}
            else: body, code, headers = fake.answer(method, params), 200, {}
            data = json.dumps(body).encode()
            self.send_response(code)
            for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **headers}.items(): self.send_header(k, v)
            self.end_headers(); self.wfile.write(data)
        def log_message(self, *a): pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True); thread.start()
    yield fake, f"http://127.0.0.1:{server.server_address[1]}/api/"
    server.shutdown(); server.server_close()

def test_slack_api_threads_pagination_and_rate_limit(slack_server, tok):
    fake, url = slack_server
    r = SlackResource(token="xoxb-test", base_url=url, min_tokens=16, max_tokens=256)
    units = r.units()
    by_channel = {}
    for u in units: by_channel.setdefault(u.metadata["channel"], []).append(u)
    assert sorted(by_channel) == ["general", "launch"]
    thread = next(u for u in units if u.metadata["n_messages"] == 3)
    assert thread.metadata["participants"] == ["Ann Lee", "Bo Chen"]            # users from both pages of users.list
    assert "Launch on Friday? @Bo Chen" in thread.text and "Thanks!" in thread.text  # both pages of replies
    assert any("Budget is $12k." in u.text for u in by_channel["launch"])        # both pages of history
    methods = [m for m, _ in fake.calls]
    assert methods.count("users.list") == 2 and methods.count("conversations.replies") == 2
    assert r.api.n_rate_limited == 1
    i = next(k for k, (m, _) in enumerate(fake.calls) if m == "conversations.history")
    assert fake.times[i + 1] - fake.times[i] >= 0.9                              # waited Retry-After before retrying
    assert all(c.n_tokens <= 256 for c in r.chunks(tok))

def test_slack_api_channel_filter_and_errors(slack_server):
    fake, url = slack_server
    fake.rate_limit_once = False
    r = SlackResource(token="xoxb-test", base_url=url, channels=["#general"])
    assert [u.metadata["channel"] for u in r.units()] == ["general"]
    with pytest.raises(ValueError, match=r"Channel\(s\) \['random'\] not visible"):
        SlackResource(token="xoxb-test", base_url=url, channels=["random"]).units()
    with pytest.raises(RuntimeError, match="users.list failed: invalid_auth"):
        SlackResource(token="xoxb-wrong", base_url=url).units()
    with pytest.raises(RuntimeError, match="Cannot reach the Slack API at http://127.0.0.1:9/"):
        SlackResource(token="xoxb-test", base_url="http://127.0.0.1:9/").units()

def test_slack_api_gives_up_when_always_rate_limited(slack_server):
    fake, url = slack_server
    from cartridges.messaging import SlackAPI, SlackError
    fake.answer = lambda method, p: None
    api = SlackAPI("xoxb-test", url, max_retries=0)
    fake.rate_limit_once = True
    with pytest.raises(SlackError, match="still rate limited"): api.call("conversations.history", channel="C1")

# ---------------------------------------------------------------- Gmail through a real MCP server over stdio
MCP_SERVER = r'''
import json, sys
try: from mcp.server.mcpserver import MCPServer as Server       # mcp 2.x
except ImportError: from mcp.server.fastmcp import FastMCP as Server  # mcp 1.x
STRUCTURED = sys.argv[1] == "json"
MAILS = {
  "m1": dict(thread="t1", subject="Kite launch venue", sender="Ann Lee <ann@acme.org>", date="Thu, 04 Dec 2025 10:00:00 +0000", body="Is Pier 7 booked for Friday?"),
  "m2": dict(thread="t1", subject="Re: Kite launch venue", sender="Bo Chen <bo@acme.org>", date="Fri, 05 Dec 2025 09:30:00 +0000",
             body="Yes, until 6pm.\n\nOn Thu, Ann wrote:\n> Is Pier 7 booked for Friday?"),
  "m3": dict(thread="t2", subject="Budget", sender="Cy Diaz <cy@acme.org>", date="Sat, 06 Dec 2025 08:00:00 +0000", body="Launch budget: $12k."),
}
app = Server("fake-gmail")

def _ids(query, maxResults):
    return [i for i, m in MAILS.items() if query.lower() in (m["subject"] + m["body"]).lower()][:maxResults]
def _get(messageId):
    if messageId not in MAILS: raise ValueError(f"no message {messageId}")
    return MAILS[messageId]

if STRUCTURED:  # typed returns: the server sends structured content (and its JSON as text)
    @app.tool(structured_output=True)
    def search_emails(query: str = "", maxResults: int = 10) -> dict[str, list]:
        return {"messages": [{"id": i, "threadId": MAILS[i]["thread"]} for i in _ids(query, maxResults)]}
    @app.tool(structured_output=True)
    def read_email(messageId: str) -> dict[str, str]:
        m = _get(messageId)
        return {"id": messageId, "threadId": m["thread"], "subject": m["subject"], "from": m["sender"], "date": m["date"], "body": m["body"]}
else:  # plain text, like the common Gmail MCP server
    @app.tool()
    def search_emails(query: str = "", maxResults: int = 10) -> str:
        return "\n\n".join(f"ID: {i}\nSubject: {MAILS[i]['subject']}\nFrom: {MAILS[i]['sender']}\nDate: {MAILS[i]['date']}" for i in _ids(query, maxResults))
    @app.tool()
    def read_email(messageId: str) -> str:
        m = _get(messageId)
        return f"Thread ID: {m['thread']}\nSubject: {m['subject']}\nFrom: {m['sender']}\nTo: team@acme.org\nDate: {m['date']}\n\n{m['body']}"

app.run()
'''

@pytest.fixture(scope="module")
def mcp_server(tmp_path_factory):
    pytest.importorskip("mcp")
    path = tmp_path_factory.mktemp("mcp")/"fake_gmail.py"
    path.write_text(MCP_SERVER)
    return path

@pytest.mark.parametrize("mode", ["text", "json"])
def test_gmail_mcp_threads(mcp_server, mode, tok):
    r = GmailResource(mcp=[sys.executable, str(mcp_server), mode], max_messages=10, min_tokens=16, max_tokens=256)
    units = r.units()
    assert [u.metadata["subject"] for u in units] == ["Kite launch venue", "Budget"]
    assert units[0].metadata["n_messages"] == 2 and units[0].metadata["participants"] == ["Ann Lee", "Bo Chen"]
    assert units[0].metadata["thread_id"] == "t1"
    assert "[2025-12-05 09:30] Bo Chen: Yes, until 6pm." in units[0].text and "> Is Pier" not in units[0].text
    assert r.stats(tok)["n_chunks"] >= 1

def test_gmail_mcp_query_and_errors(mcp_server):
    r = GmailResource(mcp=[sys.executable, str(mcp_server), "text"], query="budget")
    assert [u.metadata["subject"] for u in r.units()] == ["Budget"]
    with pytest.raises(ValueError, match=r"no tool\(s\) \['list_messages'\]; it offers \['read_email', 'search_emails'\]"):
        GmailResource(mcp=[sys.executable, str(mcp_server), "text"], list_tool="list_messages").units()
    with pytest.raises(RuntimeError, match="MCP tool 'read_email' failed"):
        GmailResource(mcp=[sys.executable, str(mcp_server), "text"], id_arg="id").units()

# ---------------------------------------------------------------- a whole code repository: this package
def test_directory_resource_on_this_repository(tok):
    r = DirectoryResource(ROOT, max_tokens=512, min_tokens=128)
    files = {u.source for u in r.units()}
    assert {"cartridges/resources.py", "nbs/02_resources.ipynb", "settings.ini"} <= files
    assert not any(f.startswith((".git/", "_docs/")) or "__pycache__" in f or f.endswith(".pyc") for f in files)
    assert all((ROOT/f).is_file() for f in files)                       # a unit's source is its file path
    chunks = r.chunks(tok)
    assert all(c.n_tokens <= 512 for c in chunks)
    assert all(c.source in files or "sources" in c.metadata for c in chunks)
    s = r.stats(tok)
    assert s["n_chunks"] == len(chunks) and s["n_tokens"] == sum(c.n_tokens for c in chunks)
    seen = {id(ChunkSampler(chunks, seed=3).sample())}
    sampler = ChunkSampler(chunks, seed=3)
    assert len({id(sampler.sample()) for _ in range(len(chunks))}) == len(chunks)   # full coverage before repeats

def test_directory_python_only_and_nested_gitignore(tmp_path):
    (tmp_path/"pkg").mkdir(); (tmp_path/"pkg/a.py").write_text("def a():\n    return 1\n")
    (tmp_path/"pkg/gen.py").write_text("x = 1\n"); (tmp_path/"pkg/.gitignore").write_text("gen.py\n")
    (tmp_path/"notes.md").write_text("# Notes\n"); (tmp_path/"data.bin").write_bytes(b"\x00\x01\x02")
    r = DirectoryResource(tmp_path, include=["*.py"])
    assert [u.source for u in r.units()] == ["pkg/a.py"]
    os.symlink("/etc", tmp_path/"etc-link"); os.symlink("/etc/hostname", tmp_path/"host.txt")
    r = DirectoryResource(tmp_path)
    assert "host.txt" not in {u.source for u in r.units()} and ("host.txt", "link leaving the folder") in r.skipped

# ---------------------------------------------------------------- bad inputs: one clear error (or warning) naming the file
def test_bad_inputs_name_the_file(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="nope.txt"): TextFileResource(tmp_path/"nope.txt")
    (tmp_path/"empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match=r"'empty.txt' is empty.*empty.txt"): TextFileResource(tmp_path/"empty.txt").chunks(tok)
    (tmp_path/"short.txt").write_text("Only a few words here.")
    with pytest.warns(UserWarning, match=r"'short.txt'.*less than one chunk"): TextFileResource(tmp_path/"short.txt").chunks(tok)
    (tmp_path/"img.txt").write_bytes(b"GIF89a\x00\x00\x00")
    with pytest.raises(ValueError, match="img.txt' looks like a binary file"): TextFileResource(tmp_path/"img.txt").text()
    (tmp_path/"cp1252.txt").write_bytes("naïve café".encode("cp1252"))
    with pytest.warns(UnicodeWarning, match=r"cp1252.txt' is not valid UTF-8: 2 byte\(s\) were replaced"):
        assert TextFileResource(tmp_path/"cp1252.txt").text() == "na\ufffdve caf\ufffd"
    (tmp_path/"bad.json").write_text("[1, 2,,]")
    with pytest.raises(ValueError, match="bad.json' is not valid JSON"): JSONResource(tmp_path/"bad.json").text()
    (tmp_path/"paper").mkdir()
    (tmp_path/"paper/main.tex").write_text("\\documentclass{article}\\begin{document}\n\\input{intro}\n\\end{document}\n")
    with pytest.raises(FileNotFoundError, match=r"main.tex': \\input\{intro\} names a missing file"): LaTeXResource(tmp_path/"paper").text()

def test_pipe_is_refused_not_read(tmp_path):
    os.mkfifo(tmp_path/"pipe.txt")   # reading it would block forever
    with pytest.raises(ValueError, match="pipe.txt' is not a regular file"): TextFileResource(tmp_path/"pipe.txt").text()
    (tmp_path/"a.md").write_text("# A\nSome text.\n")
    assert [u.source for u in DirectoryResource(tmp_path).units()] == ["a.md"]   # a folder walk skips it

@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    p = tmp_path/"secret.txt"; p.write_text("x"); p.chmod(0)
    with pytest.raises(OSError, match="Cannot read file .*secret.txt"): TextFileResource(p).text()

def _tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file": info.size = len(data); tar.addfile(info, io.BytesIO(data))
            elif kind == "symlink": info.type, info.linkname = tarfile.SYMTYPE, data; tar.addfile(info)
            elif kind == "hardlink": info.type, info.linkname = tarfile.LNKTYPE, data; tar.addfile(info)
            elif kind == "fifo": info.type = tarfile.FIFOTYPE; tar.addfile(info)
    return path

@pytest.mark.parametrize("members,message", [
    ([("../../escape.tex", "file", b"x")], "tries to escape"),
    ([("/tmp/abs.tex", "file", b"x")], "tries to escape"),
    ([("sub/../../up.tex", "file", b"x")], "tries to escape"),
    ([("ok.tex", "symlink", "/etc/passwd")], "leaves the extraction folder"),
    ([("a/link", "symlink", "../../outside")], "leaves the extraction folder"),
    ([("hard", "hardlink", "../etc/passwd")], "leaves the extraction folder"),
    ([("pipe", "fifo", None)], "device or fifo"),
])
def test_archive_escapes_are_refused(tmp_path, members, message):
    archive = _tar(tmp_path/"evil.tar.gz", [("main.tex", "file", b"\\documentclass{article}")] + members)
    with pytest.raises(ValueError, match=f"evil.tar.gz.*{message}"): LaTeXResource(archive).text()
    assert not (tmp_path.parent/"escape.tex").exists() and not Path("/tmp/abs.tex").exists()

def test_archive_size_cap_and_not_an_archive(tmp_path):
    archive = _tar(tmp_path/"big.tar.gz", [("main.tex", "file", b"%" * 200_000)])
    with pytest.raises(ValueError, match="big.tar.gz' unpacks to more than max_bytes=100,000"): LaTeXResource(archive, max_bytes=100_000).text()
    (tmp_path/"junk.tar.gz").write_bytes(b"not an archive at all")
    with pytest.raises(ValueError, match="junk.tar.gz' is neither a tar archive nor a gzipped .tex file"): LaTeXResource(tmp_path/"junk.tar.gz").text()

def test_slack_api_without_users_scope_warns_and_uses_ids(slack_server):
    fake, url = slack_server
    fake.rate_limit_once = False
    answer = fake.answer
    fake.answer = lambda method, p: {"ok": False, "error": "missing_scope"} if method == "users.list" else answer(method, p)
    with pytest.warns(UserWarning, match="users.list failed: missing_scope: authors will show as Slack user ids"):
        units = SlackResource(token="xoxb-test", base_url=url, channels=["general"]).units()
    assert units[0].metadata["author"] == "U2"

def test_gitignore_rules_agree_with_git(tmp_path):
    "walk_files keeps exactly the files git itself would track (text files, nested .gitignore files, negations)."
    import shutil
    if shutil.which("git") is None: pytest.skip("git not installed")
    from cartridges.files import walk_files
    files = {".gitignore": "*.log\nbuild/\n/top-only.txt\ndocs/**/draft-*.md\n!important.log\n", "a.py": "x\n", "top-only.txt": "x\n",
             "sub/top-only.txt": "x\n", "run.log": "x\n", "important.log": "x\n", "build/gen.py": "x\n",
             "docs/guide.md": "x\n", "docs/v1/draft-1.md": "x\n", "docs/v1/final.md": "x\n",
             "logs/.gitignore": "!keep.log\n", "logs/keep.log": "x\n", "logs/drop.log": "x\n",
             "pkg/.gitignore": "*.tmp\n!special.tmp\n", "pkg/a.tmp": "x\n", "pkg/special.tmp": "x\n", "pkg/mod.py": "x\n"}
    for rel, text in files.items(): (tmp_path/rel).parent.mkdir(parents=True, exist_ok=True); (tmp_path/rel).write_text(text)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    out = subprocess.run(["git", "-C", str(tmp_path), "ls-files", "-co", "--exclude-standard"], capture_output=True, text=True, check=True).stdout
    assert walk_files(tmp_path)[0] == sorted(out.split())

@pytest.mark.parametrize("chunker", ["structure", "token", "char"])
@pytest.mark.parametrize("max_tokens", [48, 200, 512])
def test_chunks_cover_the_corpus_within_budget(tok, chunker, max_tokens):
    "On real files: no chunk over budget, and the chunks hold every word of the corpus exactly once, in order."
    r = DirectoryResource(ROOT/"cartridges", include=["core.py", "models.py", "chunkers.py"], chunker=chunker, max_tokens=max_tokens)
    chunks = r.chunks(tok)
    if chunker == "char": assert all(len(c.text) <= 4 * max_tokens for c in chunks)
    else: assert all(c.n_tokens <= max_tokens for c in chunks)
    assert "".join("".join(c.text.split()) for c in chunks) == "".join(r.text().split())   # nothing lost, nothing repeated
    if max_tokens >= 200: assert " ".join(c.text for c in chunks).split() == r.text().split()  # and no word cut
    # (at 48 tokens a regex of 60 tokens without a space has to be cut inside, at a token boundary)
    unicode = TextResource("日本語のテキストには空白がありません。" * 40 + " naïve café " * 30, chunker=chunker, max_tokens=max_tokens, min_tokens=8)
    assert "".join("".join(c.text.split()) for c in unicode.chunks(tok)) == "".join(unicode.text().split())
