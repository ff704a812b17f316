"""Tests for gateway.parser: request and response heads (RFC 9112, RFC 9110)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.errors import ParseError
from gateway.parser import (
    HeadLimits,
    Request,
    Response,
    check_partial_head,
    connection_tokens,
    head_end,
    parse_request,
    parse_response,
)

LIMITS = HeadLimits()


def request(start: bytes = b"GET / HTTP/1.1", *fields: bytes, host: bytes | None = b"example.com") -> bytes:
    """A request head: start line, a Host field unless ``host`` is None, then ``fields``."""
    lines = [start]
    if host is not None:
        lines.append(b"Host: " + host)
    lines.extend(fields)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def response(start: bytes = b"HTTP/1.1 200 OK", *fields: bytes) -> bytes:
    """A response head: status line then ``fields``."""
    return b"\r\n".join((start,) + fields) + b"\r\n\r\n"


def parse(head: bytes, limits: HeadLimits = LIMITS) -> Request:
    return parse_request(head, limits)


def parse_resp(head: bytes, method: bytes = b"GET", limits: HeadLimits = LIMITS) -> Response:
    return parse_response(head, limits, method)


class _Rejects(SynchronousTestCase):
    """Helpers asserting a head is rejected with a given status hint."""

    def assert_rejected(self, head: bytes, status: int = 400, limits: HeadLimits = LIMITS) -> ParseError:
        exc = self.assertRaises(ParseError, parse_request, head, limits)
        self.assertEqual(exc.status, status, exc.reason)
        return exc

    def assert_response_rejected(
        self, head: bytes, method: bytes = b"GET", limits: HeadLimits = LIMITS
    ) -> ParseError:
        exc = self.assertRaises(ParseError, parse_response, head, limits, method)
        self.assertEqual(exc.status, 502, exc.reason)
        return exc


class HeadEndTests(SynchronousTestCase):
    def test_found(self) -> None:
        """head_end returns the index just past CRLF CRLF (RFC 9112 §2.1)."""
        buf = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY"
        self.assertEqual(head_end(buf), len(buf) - 4)

    def test_not_found(self) -> None:
        """head_end returns -1 while the empty line has not arrived."""
        self.assertEqual(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), -1)

    def test_start(self) -> None:
        """head_end resumes from ``start``, finding a terminator split across reads."""
        buf = bytearray(b"GET / HTTP/1.1\r\nHost: a\r\n\r")
        self.assertEqual(head_end(buf), -1)
        scanned = len(buf)
        buf += b"\n"
        self.assertEqual(head_end(buf, max(0, scanned - 3)), len(buf))


class PartialHeadTests(_Rejects):
    def test_line_at_limit(self) -> None:
        """An unfinished first line of exactly max_line bytes is still acceptable (RFC 9112 §3)."""
        check_partial_head(b"G" * 100, HeadLimits(max_line=100))

    def test_line_at_limit_with_cr(self) -> None:
        """max_line bytes plus the CR of the coming CRLF is still acceptable."""
        check_partial_head(b"G" * 100 + b"\r", HeadLimits(max_line=100))

    def test_line_over_limit(self) -> None:
        """An unfinished first line longer than max_line is 414 (RFC 9112 §3: 414 URI Too Long)."""
        exc = self.assertRaises(ParseError, check_partial_head, b"G" * 101, HeadLimits(max_line=100))
        self.assertEqual(exc.status, 414)

    def test_finished_line_not_checked_again(self) -> None:
        """Once the first line has its CRLF, only the size limit applies."""
        check_partial_head(b"GET / HTTP/1.1\r\n" + b"X" * 200, HeadLimits(max_line=20, max_size=300))

    def test_size_at_limit(self) -> None:
        """A partial head of exactly max_size bytes is acceptable."""
        check_partial_head(b"GET / HTTP/1.1\r\n".ljust(300, b"x"), HeadLimits(max_size=300))

    def test_size_over_limit(self) -> None:
        """A partial head over max_size is 431 (RFC 6585 §5)."""
        buf = b"GET / HTTP/1.1\r\n".ljust(301, b"x")
        exc = self.assertRaises(ParseError, check_partial_head, buf, HeadLimits(max_size=300))
        self.assertEqual(exc.status, 431)

    def test_bare_lf_first_line(self) -> None:
        """A first line ended by a bare LF is 400 at once (RFC 9112 §2.2), not a wait."""
        exc = self.assertRaises(ParseError, check_partial_head, b"GET / HTTP/1.1\nHost", LIMITS)
        self.assertEqual(exc.status, 400)


class RequestLineTests(_Rejects):
    def test_origin_form(self) -> None:
        """RFC 9112 §3: request-line = method SP request-target SP HTTP-version."""
        req = parse(request(b"GET /a/b?c=d HTTP/1.1"))
        self.assertEqual((req.method, req.target, req.version), (b"GET", b"/a/b?c=d", b"HTTP/1.1"))

    def test_http10(self) -> None:
        """HTTP/1.0 requests are accepted (RFC 9112 §2.3)."""
        self.assertEqual(parse(request(b"GET / HTTP/1.0", host=None)).version, b"HTTP/1.0")

    def test_absolute_form(self) -> None:
        """RFC 9112 §3.2.2: "A server MUST accept the absolute-form in requests"."""
        req = parse(request(b"GET http://example.com/x HTTP/1.1"))
        self.assertEqual(req.target, b"http://example.com/x")

    def test_absolute_form_https_no_path(self) -> None:
        """An https absolute-form target without a path is accepted (RFC 9110 §4.2.2)."""
        self.assertEqual(parse(request(b"GET https://example.com HTTP/1.1")).host, b"example.com")

    def test_absolute_form_overrides_host(self) -> None:
        """RFC 9112 §3.2.2: the server "MUST ignore the received Host header field" for absolute-form."""
        req = parse(request(b"GET http://origin.test:8080/x HTTP/1.1", host=b"other.test"))
        self.assertEqual(req.host, b"origin.test:8080")
        self.assertEqual(req.headers, [(b"Host", b"other.test")])

    def test_absolute_form_empty_host(self) -> None:
        """RFC 9110 §4.2.1: an http URI with an empty host "MUST [be rejected] as invalid"."""
        self.assert_rejected(request(b"GET http:///x HTTP/1.1"))

    def test_absolute_form_userinfo(self) -> None:
        """RFC 9110 §4.2.4: userinfo in an http URI is treated as an error."""
        self.assert_rejected(request(b"GET http://user@example.com/ HTTP/1.1"))

    def test_absolute_form_other_scheme(self) -> None:
        """Only http and https targets are proxied; ftp:// is 400 (RFC 9112 §3.2.2)."""
        self.assert_rejected(request(b"GET ftp://example.com/ HTTP/1.1"))

    def test_asterisk_options(self) -> None:
        """RFC 9112 §3.2.4: asterisk-form is used for a server-wide OPTIONS request."""
        self.assertEqual(parse(request(b"OPTIONS * HTTP/1.1")).target, b"*")

    def test_asterisk_other_method(self) -> None:
        """RFC 9112 §3.2.4: asterisk-form "is only used for a server-wide OPTIONS request"."""
        self.assert_rejected(request(b"GET * HTTP/1.1"))

    def test_connect_authority_form(self) -> None:
        """RFC 9112 §3.2.3 authority-form (CONNECT) is 400: the gateway does not tunnel."""
        self.assert_rejected(request(b"CONNECT example.com:443 HTTP/1.1"))

    def test_authority_form_without_connect(self) -> None:
        """RFC 9112 §3.2.3: authority-form is only for CONNECT."""
        self.assert_rejected(request(b"GET example.com:80 HTTP/1.1"))

    def test_relative_target(self) -> None:
        """A target that is none of the four forms is 400 (RFC 9112 §3.2)."""
        self.assert_rejected(request(b"GET index.html HTTP/1.1"))

    def test_double_space(self) -> None:
        """Components are separated by exactly one SP (RFC 9112 §3)."""
        self.assert_rejected(request(b"GET  / HTTP/1.1"))

    def test_space_in_target(self) -> None:
        """RFC 9112 §3.2: "No whitespace is allowed in the request-target"."""
        self.assert_rejected(request(b"GET /a b HTTP/1.1"))

    def test_tab_separator(self) -> None:
        """HTAB is not SP: a tab-separated request line is 400 (RFC 9112 §3)."""
        self.assert_rejected(request(b"GET\t/ HTTP/1.1"))

    def test_leading_space(self) -> None:
        """A request line starting with SP is 400 (RFC 9112 §3)."""
        self.assert_rejected(request(b" GET / HTTP/1.1"))

    def test_trailing_space(self) -> None:
        """A request line ending with SP is 400 (RFC 9112 §3)."""
        self.assert_rejected(request(b"GET / HTTP/1.1 "))

    def test_missing_version(self) -> None:
        """HTTP/0.9 style "GET /" has no version and is 400 (RFC 9112 §3)."""
        self.assert_rejected(request(b"GET /"))

    def test_method_not_token(self) -> None:
        """RFC 9112 §3.1: method = token."""
        self.assert_rejected(request(b"G(T / HTTP/1.1"))

    def test_ctl_in_target(self) -> None:
        """Control bytes are not allowed in the request-target (RFC 3986 §2)."""
        self.assert_rejected(request(b"GET /\x01 HTTP/1.1"))

    def test_del_in_target(self) -> None:
        """DEL is not allowed in the request-target (RFC 3986 §2)."""
        self.assert_rejected(request(b"GET /\x7f HTTP/1.1"))

    def test_obs_text_in_target(self) -> None:
        """Bytes 0x80-0xFF in a target are let through, as most servers do (documented choice)."""
        self.assertEqual(parse(request(b"GET /caf\xc3\xa9 HTTP/1.1")).target, b"/caf\xc3\xa9")

    def test_version_2(self) -> None:
        """RFC 9110 §15.6.6: a well-formed unsupported major version is 505."""
        self.assert_rejected(request(b"GET / HTTP/2.0"), 505)

    def test_version_12(self) -> None:
        """HTTP/1.2 is well-formed but not spoken here: 505 (RFC 9110 §15.6.6)."""
        self.assert_rejected(request(b"GET / HTTP/1.2"), 505)

    def test_version_lowercase(self) -> None:
        """RFC 9112 §2.3: HTTP-name is case-sensitive, so "http/1.1" is 400."""
        self.assert_rejected(request(b"GET / http/1.1"))

    def test_version_garbage(self) -> None:
        """A version that is not HTTP/DIGIT.DIGIT is 400 (RFC 9112 §2.3)."""
        for version in (b"HTTP/1.10", b"HTTP/1", b"HTTP/a.b", b"HTTX/1.1"):
            with self.subTest(version=version):
                self.assert_rejected(request(b"GET / " + version))

    def test_bare_cr_in_request_line(self) -> None:
        """RFC 9112 §2.2: a bare CR is invalid; 400."""
        self.assert_rejected(request(b"GET /\r HTTP/1.1"))

    def test_bare_lf_ends_request_line(self) -> None:
        """A request line ended by LF alone is 400: lines end in CRLF (RFC 9112 §2.2)."""
        self.assert_rejected(b"GET / HTTP/1.1\nHost: a\r\n\r\n")

    def test_leading_empty_line_ignored(self) -> None:
        """RFC 9112 §2.2: a server "SHOULD ignore at least one empty line (CRLF)" before the request-line."""
        self.assertEqual(parse(b"\r\n" + request()).method, b"GET")

    def test_leading_bare_lf(self) -> None:
        """Only CRLF pairs are skipped before the request line; a bare LF is 400 (RFC 9112 §2.2)."""
        self.assert_rejected(b"\n" + request())

    def test_head_without_final_empty_line(self) -> None:
        """A head must end in CRLF CRLF (RFC 9112 §2.1)."""
        self.assert_rejected(b"GET / HTTP/1.1\r\nHost: a\r\n")


class FieldTests(_Rejects):
    def test_order_case_and_duplicates_kept(self) -> None:
        """RFC 9110 §5.3: field order matters for repeated names; names are kept as received."""
        req = parse(request(b"GET / HTTP/1.1", b"X-A: 1", b"x-a: 2", b"Set-Thing: z", b"X-A: 3"))
        self.assertEqual(
            req.headers,
            [(b"Host", b"example.com"), (b"X-A", b"1"), (b"x-a", b"2"), (b"Set-Thing", b"z"), (b"X-A", b"3")],
        )

    def test_ows_stripped(self) -> None:
        """RFC 9112 §5: field-line = field-name ":" OWS field-value OWS; the OWS is not part of the value."""
        req = parse(request(b"GET / HTTP/1.1", b"X:  \t a  b \t ", b"Y:z"))
        self.assertEqual(req.headers[1:], [(b"X", b"a  b"), (b"Y", b"z")])

    def test_empty_value(self) -> None:
        """RFC 9110 §5.5: field-value = *field-content may be empty."""
        req = parse(request(b"GET / HTTP/1.1", b"X:", b"Y:   "))
        self.assertEqual(req.headers[1:], [(b"X", b""), (b"Y", b"")])

    def test_obs_text_value(self) -> None:
        """RFC 9110 §5.5: field-vchar = VCHAR / obs-text (0x80-0xFF)."""
        self.assertEqual(parse(request(b"GET / HTTP/1.1", b"X: caf\xe9")).headers[1], (b"X", b"caf\xe9"))

    def test_htab_inside_value(self) -> None:
        """RFC 9110 §5.5: HTAB is allowed inside a field value."""
        self.assertEqual(parse(request(b"GET / HTTP/1.1", b"X: a\tb")).headers[1], (b"X", b"a\tb"))

    def test_bare_lf_in_field_section(self) -> None:
        """RFC 9112 §2.2: field lines end in CRLF; a bare LF is 400."""
        self.assert_rejected(request(b"GET / HTTP/1.1", b"X: a\nY: b"))

    def test_bare_lf_before_final_crlf(self) -> None:
        """A field line ended by LF alone just before the empty line is 400 (RFC 9112 §2.2)."""
        self.assert_rejected(b"GET / HTTP/1.1\r\nHost: a\n\r\n")

    def test_bare_cr_in_value(self) -> None:
        """RFC 9110 §5.5: "Field values containing CR, LF, or NUL characters are invalid and dangerous"."""
        self.assert_rejected(request(b"GET / HTTP/1.1", b"X: a\rY: b"))

    def test_nul_in_value(self) -> None:
        """RFC 9110 §5.5: NUL in a field value is invalid; 400."""
        self.assert_rejected(request(b"GET / HTTP/1.1", b"X: a\x00b"))

    def test_ctl_in_value(self) -> None:
        """RFC 9110 §5.5: CTLs other than HTAB are not field-vchar."""
        for ctl in (b"\x01", b"\x1f", b"\x7f", b"\x0b"):
            with self.subTest(ctl=ctl):
                self.assert_rejected(request(b"GET / HTTP/1.1", b"X: a" + ctl + b"b"))

    def test_obs_fold_sp(self) -> None:
        """RFC 9112 §5.2: an obs-fold in a request MUST be rejected (400) or replaced; we reject."""
        self.assert_rejected(request(b"GET / HTTP/1.1", b"X: a", b" b"))

    def test_obs_fold_htab(self) -> None:
        """RFC 9112 §5.2: obs-fold starting with HTAB is 400 as well."""
        self.assert_rejected(request(b"GET / HTTP/1.1", b"X: a", b"\tb"))

    def test_space_before_colon(self) -> None:
        """RFC 9112 §5.1: "A server MUST reject [...] whitespace between a header field name and colon"."""
        self.assert_rejected(request(b"GET / HTTP/1.1", b"Content-Length : 5"))

    def test_tab_before_colon(self) -> None:
        """RFC 9112 §5.1: HTAB between name and colon is 400 as well."""
        self.assert_rejected(request(b"GET / HTTP/1.1", b"X\t: a"))

    def test_empty_name(self) -> None:
        """RFC 9110 §5.1: field-name = token, at least one tchar."""
        self.assert_rejected(request(b"GET / HTTP/1.1", b": a"))

    def test_no_colon(self) -> None:
        """RFC 9112 §5: a field line without a colon is 400."""
        self.assert_rejected(request(b"GET / HTTP/1.1", b"NoColonHere"))

    def test_name_not_token(self) -> None:
        """RFC 9110 §5.1: field-name = token; separators such as "(" or "/" are 400."""
        for name in (b"X(y)", b"X/y", b"X\x00", b"X\xe9", b"X@"):
            with self.subTest(name=name):
                self.assert_rejected(request(b"GET / HTTP/1.1", name + b": a"))

    def test_reason_names_the_problem(self) -> None:
        """The log reason says what was wrong (RFC 9112 §5.1 whitespace case)."""
        exc = self.assert_rejected(request(b"GET / HTTP/1.1", b"X : a"))
        self.assertIn("whitespace", exc.reason)


class HostTests(_Rejects):
    def test_missing_host_11(self) -> None:
        """RFC 9112 §3.2: 400 for "any HTTP/1.1 request message that lacks a Host header field"."""
        self.assert_rejected(request(host=None))

    def test_missing_host_10(self) -> None:
        """HTTP/1.0 may omit Host; host is then b"" (RFC 9112 §3.2 applies to HTTP/1.1)."""
        self.assertEqual(parse(request(b"GET / HTTP/1.0", host=None)).host, b"")

    def test_two_hosts(self) -> None:
        """RFC 9112 §3.2: 400 for "more than one Host header field line"."""
        self.assert_rejected(request(b"GET / HTTP/1.1", b"host: other.test"))

    def test_two_hosts_10(self) -> None:
        """RFC 9112 §3.2: the duplicate-Host rule covers "any request message", HTTP/1.0 too."""
        self.assert_rejected(request(b"GET / HTTP/1.0", b"Host: other.test"))

    def test_invalid_host(self) -> None:
        """RFC 9112 §3.2: 400 for "a Host header field with an invalid field value"."""
        for value in (b"a b", b"a/b", b"a@b", b"a:80x", b"a\"b", b"[::1"):
            with self.subTest(value=value):
                self.assert_rejected(request(host=value))

    def test_host_value(self) -> None:
        """The Host value (OWS stripped) is exposed as ``host`` (RFC 9110 §7.2)."""
        self.assertEqual(parse(request(host=b"Example.com:8080")).host, b"Example.com:8080")

    def test_ipv6_host(self) -> None:
        """RFC 3986 §3.2.2: IP-literal hosts are valid Host values."""
        self.assertEqual(parse(request(host=b"[::1]:8080")).host, b"[::1]:8080")

    def test_empty_host(self) -> None:
        """RFC 9110 §7.2: a Host field with an empty value is valid."""
        self.assertEqual(parse(request(host=b"")).host, b"")

    def test_host_case_insensitive_name(self) -> None:
        """Field names are case-insensitive (RFC 9110 §5.1): "hOsT" is the Host field."""
        self.assertEqual(parse(request(b"GET / HTTP/1.1", b"hOsT: x.test", host=None)).host, b"x.test")


class BodyFramingTests(_Rejects):
    def test_no_body(self) -> None:
        """RFC 9112 §6.3 rule 7: neither CL nor TE in a request means a zero-length body."""
        req = parse(request())
        self.assertEqual((req.content_length, req.chunked), (0, False))

    def test_content_length(self) -> None:
        """RFC 9112 §6.3 rule 6: a valid Content-Length gives the body length."""
        self.assertEqual(parse(request(b"POST / HTTP/1.1", b"Content-Length: 42")).content_length, 42)

    def test_content_length_leading_zeros(self) -> None:
        """RFC 9110 §8.6: Content-Length = 1*DIGIT; "007" is 7."""
        self.assertEqual(parse(request(b"POST / HTTP/1.1", b"Content-Length: 007")).content_length, 7)

    def test_content_length_not_digits(self) -> None:
        """RFC 9112 §6.3 rule 5: an invalid Content-Length in a request is 400."""
        for value in (b"-1", b"+5", b"5a", b"", b"0x5", b"5.0", b"5 5", b"\xef\xbc\x95"):
            with self.subTest(value=value):
                self.assert_rejected(request(b"POST / HTTP/1.1", b"Content-Length: " + value))

    def test_content_length_18_digits(self) -> None:
        """The longest accepted Content-Length has 18 digits (fits 64 bits)."""
        req = parse(request(b"POST / HTTP/1.1", b"Content-Length: " + b"9" * 18))
        self.assertEqual(req.content_length, 10**18 - 1)

    def test_content_length_19_digits(self) -> None:
        """A 19-digit Content-Length is 400: nothing honest is that long, overflow attempts are."""
        self.assert_rejected(request(b"POST / HTTP/1.1", b"Content-Length: " + b"1" * 19))

    def test_identical_list(self) -> None:
        """RFC 9112 §6.3 rule 5: "42, 42" is processed as 42."""
        self.assertEqual(parse(request(b"POST / HTTP/1.1", b"Content-Length: 5, 5")).content_length, 5)

    def test_identical_fields(self) -> None:
        """Two identical Content-Length fields count as one list (RFC 9110 §5.3, RFC 9112 §6.3 rule 5)."""
        req = parse(request(b"POST / HTTP/1.1", b"Content-Length: 5", b"content-length: 5"))
        self.assertEqual(req.content_length, 5)

    def test_differing_list(self) -> None:
        """RFC 9112 §6.3 rule 5: differing values are an unrecoverable error, 400."""
        self.assert_rejected(request(b"POST / HTTP/1.1", b"Content-Length: 5, 6"))

    def test_differing_fields(self) -> None:
        """RFC 9112 §6.3 rule 5: two Content-Length fields that differ are 400."""
        self.assert_rejected(request(b"POST / HTTP/1.1", b"Content-Length: 5", b"Content-Length: 6"))

    def test_empty_list_member(self) -> None:
        """A Content-Length list with an empty member ("5,") is not all-valid: 400 (RFC 9112 §6.3)."""
        self.assert_rejected(request(b"POST / HTTP/1.1", b"Content-Length: 5,"))

    def test_chunked(self) -> None:
        """RFC 9112 §6.3 rule 4: chunked as the (only) coding frames the body; length -1."""
        req = parse(request(b"POST / HTTP/1.1", b"Transfer-Encoding: chunked"))
        self.assertEqual((req.content_length, req.chunked), (-1, True))

    def test_chunked_case_insensitive(self) -> None:
        """RFC 9112 §7: transfer-coding names are case-insensitive."""
        self.assertTrue(parse(request(b"POST / HTTP/1.1", b"transfer-encoding: Chunked")).chunked)

    def test_te_and_cl(self) -> None:
        """RFC 9112 §6.1: a server MAY reject a request with both TE and CL; we do (smuggling)."""
        self.assert_rejected(request(b"POST / HTTP/1.1", b"Transfer-Encoding: chunked", b"Content-Length: 5"))

    def test_cl_and_te(self) -> None:
        """CL before TE is rejected the same way (RFC 9112 §6.1)."""
        self.assert_rejected(request(b"POST / HTTP/1.1", b"Content-Length: 5", b"Transfer-Encoding: chunked"))

    def test_te_not_final_chunked(self) -> None:
        """RFC 9112 §6.3 rule 4: chunked not final in a request "MUST respond with [...] 400"."""
        self.assert_rejected(request(b"POST / HTTP/1.1", b"Transfer-Encoding: chunked, gzip"))

    def test_te_other_codings(self) -> None:
        """Codings other than exactly one chunked are 400: we decode none of them (RFC 9112 §6.1)."""
        for value in (b"gzip", b"gzip, chunked", b"identity", b"chunked;x=1", b"chunked,", b"xchunked"):
            with self.subTest(value=value):
                self.assert_rejected(request(b"POST / HTTP/1.1", b"Transfer-Encoding: " + value))

    def test_te_chunked_twice(self) -> None:
        """RFC 9112 §6.1: chunked "MUST NOT" be applied more than once; "chunked, chunked" is 400."""
        self.assert_rejected(request(b"POST / HTTP/1.1", b"Transfer-Encoding: chunked, chunked"))

    def test_te_two_fields(self) -> None:
        """Two Transfer-Encoding fields form one list "chunked, chunked": 400 (RFC 9110 §5.3)."""
        self.assert_rejected(
            request(b"POST / HTTP/1.1", b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked")
        )

    def test_te_http10(self) -> None:
        """RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing: 400."""
        self.assert_rejected(request(b"POST / HTTP/1.0", b"Transfer-Encoding: chunked"))


class PersistenceTests(SynchronousTestCase):
    def test_11_default(self) -> None:
        """RFC 9112 §9.3: HTTP/1.1 persists unless "close" is present."""
        self.assertTrue(parse(request()).keep_alive)

    def test_11_close(self) -> None:
        """RFC 9112 §9.3: the "close" option ends an HTTP/1.1 connection after the response."""
        self.assertFalse(parse(request(b"GET / HTTP/1.1", b"Connection: close")).keep_alive)

    def test_11_close_case_and_list(self) -> None:
        """RFC 9110 §7.6.1: connection options are case-insensitive and may be listed."""
        self.assertFalse(parse(request(b"GET / HTTP/1.1", b"Connection: Upgrade, CLOSE")).keep_alive)

    def test_10_default(self) -> None:
        """RFC 9112 §9.3: HTTP/1.0 without "keep-alive" closes."""
        self.assertFalse(parse(request(b"GET / HTTP/1.0", host=None)).keep_alive)

    def test_10_keep_alive(self) -> None:
        """RFC 9112 §9.3: HTTP/1.0 with the "keep-alive" connection option persists."""
        self.assertTrue(parse(request(b"GET / HTTP/1.0", b"Connection: Keep-Alive", host=None)).keep_alive)

    def test_10_keep_alive_and_close(self) -> None:
        """RFC 9112 §9.3: "close" wins over "keep-alive"."""
        head = request(b"GET / HTTP/1.0", b"Connection: keep-alive", b"Connection: close", host=None)
        self.assertFalse(parse(head).keep_alive)

    def test_connection_tokens(self) -> None:
        """Connection options of all fields, lower-cased (RFC 9110 §7.6.1)."""
        req = parse(request(b"GET / HTTP/1.1", b"Connection: Keep-Alive, X-Foo", b"Connection: upgrade"))
        self.assertEqual(req.connection, frozenset([b"keep-alive", b"x-foo", b"upgrade"]))

    def test_connection_tokens_helper(self) -> None:
        """connection_tokens ignores empty list elements (RFC 9110 §5.6.1)."""
        self.assertEqual(connection_tokens([b" , Close ,,te"]), frozenset([b"close", b"te"]))


class ExpectTests(SynchronousTestCase):
    def test_continue(self) -> None:
        """RFC 9110 §10.1.1: Expect: 100-continue on HTTP/1.1 asks for an interim 100."""
        self.assertTrue(parse(request(b"POST / HTTP/1.1", b"Expect: 100-continue")).expect_continue)

    def test_continue_case(self) -> None:
        """RFC 9110 §10.1.1: the expectation is matched case-insensitively."""
        self.assertTrue(parse(request(b"POST / HTTP/1.1", b"expect: 100-Continue")).expect_continue)

    def test_continue_http10(self) -> None:
        """RFC 9110 §10.1.1: "A server that receives a 100-continue expectation in an HTTP/1.0 request MUST ignore" it."""
        head = request(b"POST / HTTP/1.0", b"Expect: 100-continue", host=None)
        self.assertFalse(parse(head).expect_continue)

    def test_absent(self) -> None:
        """No Expect field, no expectation."""
        self.assertFalse(parse(request()).expect_continue)

    def test_other_expectation(self) -> None:
        """Another expectation is not 100-continue (RFC 9110 §10.1.1)."""
        self.assertFalse(parse(request(b"POST / HTTP/1.1", b"Expect: 200-ok")).expect_continue)


def _head_of_size(size: int) -> bytes:
    """A valid request head of exactly ``size`` bytes."""
    base = request(b"GET / HTTP/1.1", b"X: ")
    return base[:-4] + b"a" * (size - len(base)) + b"\r\n\r\n"


def _head_with_fields(count: int) -> bytes:
    """A valid request head with exactly ``count`` fields (Host included)."""
    return request(b"GET / HTTP/1.1", *[b"X-%d: v" % i for i in range(count - 1)])


class RequestLimitTests(_Rejects):
    def test_line_at_limit(self) -> None:
        """A request line of exactly max_line bytes is accepted (RFC 9112 §3)."""
        line = b"GET /" + b"a" * (100 - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
        self.assertEqual(len(line), 100)
        self.assertEqual(parse(request(line), HeadLimits(max_line=100)).method, b"GET")

    def test_line_over_limit(self) -> None:
        """RFC 9112 §3: a request-line longer than the server wants is 414 (URI Too Long)."""
        line = b"GET /" + b"a" * (101 - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
        self.assert_rejected(request(line), 414, HeadLimits(max_line=100))

    def test_size_at_limit(self) -> None:
        """A head of exactly max_size bytes (CRLFs included) is accepted."""
        self.assertEqual(len(parse(_head_of_size(300), HeadLimits(max_size=300)).headers), 2)

    def test_size_over_limit(self) -> None:
        """RFC 6585 §5: a head over max_size is 431 (Request Header Fields Too Large)."""
        self.assert_rejected(_head_of_size(301), 431, HeadLimits(max_size=300))

    def test_count_at_limit(self) -> None:
        """Exactly max_count fields are accepted."""
        self.assertEqual(len(parse(_head_with_fields(10), HeadLimits(max_count=10)).headers), 10)

    def test_count_over_limit(self) -> None:
        """RFC 6585 §5: more than max_count fields is 431."""
        self.assert_rejected(_head_with_fields(11), 431, HeadLimits(max_count=10))

    def test_defaults(self) -> None:
        """The default limits are 8 KiB line, 32 KiB head, 100 fields."""
        self.assertEqual(HeadLimits(), HeadLimits(max_line=8192, max_size=32768, max_count=100))


class ResponseStatusLineTests(_Rejects):
    def test_status_line(self) -> None:
        """RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ]."""
        resp = parse_resp(response(b"HTTP/1.1 404 Not Found", b"Content-Length: 0"))
        self.assertEqual((resp.version, resp.status, resp.reason), (b"HTTP/1.1", 404, b"Not Found"))

    def test_empty_reason(self) -> None:
        """RFC 9112 §4: the reason-phrase may be empty after the SP."""
        self.assertEqual(parse_resp(response(b"HTTP/1.1 200 ", b"Content-Length: 0")).reason, b"")

    def test_no_space_before_missing_reason(self) -> None:
        """"HTTP/1.1 200" without the SP is accepted, as real servers send it (RFC 9112 §4 robustness)."""
        resp = parse_resp(response(b"HTTP/1.1 200", b"Content-Length: 0"))
        self.assertEqual((resp.status, resp.reason), (200, b""))

    def test_reason_text(self) -> None:
        """RFC 9112 §4: reason-phrase = *( HTAB / SP / VCHAR / obs-text )."""
        resp = parse_resp(response(b"HTTP/1.0 200 Tr\xe8s  bien\t!", b"Content-Length: 0"))
        self.assertEqual((resp.version, resp.reason), (b"HTTP/1.0", b"Tr\xe8s  bien\t!"))

    def test_malformed(self) -> None:
        """A status line not matching RFC 9112 §4 is 502 from the proxy's side."""
        for line in (
            b"HTTP/1.1 20 OK",
            b"HTTP/1.1 2000 OK",
            b"HTTP/1.1 abc OK",
            b"HTTP/1.1  200 OK",
            b"HTTP/2 200 OK",
            b"HTTP/2.0 200 OK",
            b"http/1.1 200 OK",
            b"HTTP/1.1 200 O\x00K",
            b"ICY 200 OK",
        ):
            with self.subTest(line=line):
                self.assert_response_rejected(response(line, b"Content-Length: 0"))

    def test_status_out_of_range(self) -> None:
        """RFC 9110 §15: "Values outside the range 100..599 are invalid"."""
        for code in (b"000", b"099", b"600", b"999"):
            with self.subTest(code=code):
                self.assert_response_rejected(response(b"HTTP/1.1 " + code + b" X", b"Content-Length: 0"))


class ResponseFramingTests(_Rejects):
    def test_content_length(self) -> None:
        """RFC 9112 §6.3 rule 6: a valid Content-Length is the body length."""
        resp = parse_resp(response(b"HTTP/1.1 200 OK", b"Content-Length: 12"))
        self.assertEqual((resp.content_length, resp.chunked, resp.keep_alive), (12, False, True))

    def test_chunked(self) -> None:
        """RFC 9112 §6.3 rule 4: chunked as final coding frames the body (-1)."""
        resp = parse_resp(response(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked"))
        self.assertEqual((resp.content_length, resp.chunked, resp.keep_alive), (-1, True, True))

    def test_gzip_then_chunked(self) -> None:
        """RFC 9112 §6.3 rule 4: what counts is that chunked is the final coding."""
        resp = parse_resp(response(b"HTTP/1.1 200 OK", b"Transfer-Encoding: gzip, Chunked"))
        self.assertEqual((resp.content_length, resp.chunked), (-1, True))

    def test_chunked_not_final(self) -> None:
        """RFC 9112 §6.3 rule 4: chunked not final in a response means read until close (-2)."""
        resp = parse_resp(response(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked, gzip"))
        self.assertEqual((resp.content_length, resp.chunked, resp.keep_alive), (-2, False, False))

    def test_te_without_chunked(self) -> None:
        """RFC 9112 §6.3 rule 4: Transfer-Encoding without chunked is read until close."""
        resp = parse_resp(response(b"HTTP/1.1 200 OK", b"Transfer-Encoding: gzip", b"Content-Length: 5"))
        self.assertEqual((resp.content_length, resp.keep_alive), (-2, False))

    def test_chunked_twice(self) -> None:
        """RFC 9112 §6.1: chunked "MUST NOT" be applied twice; such a response is 502."""
        self.assert_response_rejected(response(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked, chunked"))

    def test_te_and_cl(self) -> None:
        """RFC 9112 §6.3 rule 3: TE overrides CL, and the connection is not reused."""
        resp = parse_resp(response(b"HTTP/1.1 200 OK", b"Content-Length: 5", b"Transfer-Encoding: chunked"))
        self.assertEqual((resp.content_length, resp.chunked, resp.keep_alive), (-1, True, False))

    def test_te_and_invalid_cl(self) -> None:
        """RFC 9112 §6.3 rule 3: with TE present, even an invalid CL is ignored."""
        resp = parse_resp(response(b"HTTP/1.1 200 OK", b"Content-Length: x", b"Transfer-Encoding: chunked"))
        self.assertEqual(resp.content_length, -1)

    def test_te_in_http10(self) -> None:
        """RFC 9112 §6.1: TE in an HTTP/1.0 message is faulty framing: decode, then close."""
        resp = parse_resp(
            response(b"HTTP/1.0 200 OK", b"Transfer-Encoding: chunked", b"Connection: keep-alive")
        )
        self.assertEqual((resp.content_length, resp.keep_alive), (-1, False))

    def test_until_close(self) -> None:
        """RFC 9112 §6.3 rule 8: no CL and no TE means read until the server closes (-2)."""
        resp = parse_resp(response(b"HTTP/1.1 200 OK"))
        self.assertEqual((resp.content_length, resp.chunked, resp.keep_alive), (-2, False, False))

    def test_identical_content_lengths(self) -> None:
        """RFC 9112 §6.3 rule 5: identical values are processed as one."""
        resp = parse_resp(response(b"HTTP/1.1 200 OK", b"Content-Length: 7, 7", b"Content-Length: 7"))
        self.assertEqual(resp.content_length, 7)

    def test_differing_content_lengths(self) -> None:
        """RFC 9112 §6.3 rule 5: a proxy MUST "discard the received response, and send a 502"."""
        self.assert_response_rejected(response(b"HTTP/1.1 200 OK", b"Content-Length: 7", b"Content-Length: 8"))

    def test_invalid_content_length(self) -> None:
        """RFC 9112 §6.3 rule 5: an invalid Content-Length in a response is 502."""
        for value in (b"-1", b"abc", b"", b"1" * 19):
            with self.subTest(value=value):
                self.assert_response_rejected(response(b"HTTP/1.1 200 OK", b"Content-Length: " + value))

    def test_head_response(self) -> None:
        """RFC 9112 §6.3 rule 1: a response to HEAD has no body, whatever CL says."""
        resp = parse_resp(response(b"HTTP/1.1 200 OK", b"Content-Length: 100"), method=b"HEAD")
        self.assertEqual((resp.content_length, resp.chunked, resp.keep_alive), (0, False, True))

    def test_head_response_chunked(self) -> None:
        """RFC 9112 §6.3 rule 1: a response to HEAD has no body, even with TE: chunked."""
        resp = parse_resp(response(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked"), method=b"HEAD")
        self.assertEqual((resp.content_length, resp.chunked), (0, False))

    def test_informational(self) -> None:
        """RFC 9112 §6.3 rule 1: 1xx responses have no body."""
        for code in (b"100 Continue", b"103 Early Hints"):
            with self.subTest(code=code):
                resp = parse_resp(response(b"HTTP/1.1 " + code))
                self.assertEqual((resp.content_length, resp.chunked, resp.keep_alive), (0, False, True))

    def test_no_content(self) -> None:
        """RFC 9112 §6.3 rule 1: 204 has no body."""
        resp = parse_resp(response(b"HTTP/1.1 204 No Content"))
        self.assertEqual((resp.content_length, resp.chunked, resp.keep_alive), (0, False, True))

    def test_not_modified(self) -> None:
        """RFC 9112 §6.3 rule 1: 304 has no body; its CL describes the selected representation."""
        resp = parse_resp(response(b"HTTP/1.1 304 Not Modified", b"Content-Length: 500"))
        self.assertEqual((resp.content_length, resp.chunked, resp.keep_alive), (0, False, True))

    def test_no_content_with_length(self) -> None:
        """RFC 9110 §8.6: a 204 "MUST NOT" carry Content-Length; a non-zero one ends the connection."""
        resp = parse_resp(response(b"HTTP/1.1 204 No Content", b"Content-Length: 5"))
        self.assertEqual((resp.content_length, resp.keep_alive), (0, False))

    def test_no_content_with_zero_length(self) -> None:
        """A 204 with "Content-Length: 0" frames no body either way and stays reusable."""
        resp = parse_resp(response(b"HTTP/1.1 204 No Content", b"Content-Length: 0"))
        self.assertEqual((resp.content_length, resp.keep_alive), (0, True))

    def test_no_content_with_chunked(self) -> None:
        """A 204 with Transfer-Encoding may be followed by a body we don't read: not reused (RFC 9112 §6.3)."""
        resp = parse_resp(response(b"HTTP/1.1 204 No Content", b"Transfer-Encoding: chunked"))
        self.assertEqual((resp.content_length, resp.chunked, resp.keep_alive), (0, False, False))

    def test_headers_kept(self) -> None:
        """Response fields are kept in order, names as received (RFC 9110 §5.3)."""
        resp = parse_resp(response(b"HTTP/1.1 200 OK", b"Set-Cookie: a=1", b"set-cookie: b=2", b"Content-Length: 0"))
        self.assertEqual(resp.headers, [(b"Set-Cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"Content-Length", b"0")])


class ResponsePersistenceTests(SynchronousTestCase):
    def test_11_default(self) -> None:
        """RFC 9112 §9.3: an HTTP/1.1 response persists unless "close" is present."""
        self.assertTrue(parse_resp(response(b"HTTP/1.1 200 OK", b"Content-Length: 0")).keep_alive)

    def test_11_close(self) -> None:
        """RFC 9112 §9.3: "close" in an HTTP/1.1 response ends the connection."""
        resp = parse_resp(response(b"HTTP/1.1 200 OK", b"Content-Length: 0", b"Connection: Close"))
        self.assertFalse(resp.keep_alive)
        self.assertEqual(resp.connection, frozenset([b"close"]))

    def test_10_default(self) -> None:
        """RFC 9112 §9.3: an HTTP/1.0 response without "keep-alive" closes."""
        self.assertFalse(parse_resp(response(b"HTTP/1.0 200 OK", b"Content-Length: 0")).keep_alive)

    def test_10_keep_alive(self) -> None:
        """RFC 9112 §9.3: an HTTP/1.0 response with "keep-alive" persists."""
        resp = parse_resp(response(b"HTTP/1.0 200 OK", b"Content-Length: 0", b"Connection: keep-alive"))
        self.assertTrue(resp.keep_alive)


class ResponseHardeningTests(_Rejects):
    def test_bare_lf(self) -> None:
        """RFC 9112 §2.2: a bare LF in a response head is 502 here (lines end in CRLF)."""
        self.assert_response_rejected(b"HTTP/1.1 200 OK\r\nContent-Length: 0\nX: y\r\n\r\n")

    def test_bare_lf_status_line(self) -> None:
        """A status line ended by a bare LF is 502 (RFC 9112 §2.2)."""
        self.assert_response_rejected(b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n")

    def test_bare_cr(self) -> None:
        """RFC 9112 §2.2: a bare CR in a response head is 502."""
        self.assert_response_rejected(response(b"HTTP/1.1 200 OK", b"X: a\rb", b"Content-Length: 0"))

    def test_obs_fold(self) -> None:
        """RFC 9112 §5.2: a proxy MUST discard a response with obs-fold and send 502 (or unfold)."""
        self.assert_response_rejected(response(b"HTTP/1.1 200 OK", b"X: a", b" b", b"Content-Length: 0"))

    def test_space_before_colon(self) -> None:
        """RFC 9112 §5.1 whitespace before the colon: refused with 502 rather than repaired."""
        self.assert_response_rejected(response(b"HTTP/1.1 200 OK", b"Content-Length : 0"))

    def test_nul(self) -> None:
        """RFC 9110 §5.5: NUL in a field value is invalid; 502."""
        self.assert_response_rejected(response(b"HTTP/1.1 200 OK", b"X: \x00", b"Content-Length: 0"))

    def test_invalid_name(self) -> None:
        """RFC 9110 §5.1: a field name that is not a token is 502."""
        self.assert_response_rejected(response(b"HTTP/1.1 200 OK", b"X y: z", b"Content-Length: 0"))


class ResponseLimitTests(_Rejects):
    def test_line_at_limit(self) -> None:
        """A status line of exactly max_line bytes is accepted."""
        line = b"HTTP/1.1 200 " + b"r" * (60 - 13)
        self.assertEqual(parse_resp(response(line, b"Content-Length: 0"), limits=HeadLimits(max_line=60)).status, 200)

    def test_line_over_limit(self) -> None:
        """A status line over max_line is 502."""
        line = b"HTTP/1.1 200 " + b"r" * (61 - 13)
        self.assert_response_rejected(response(line, b"Content-Length: 0"), limits=HeadLimits(max_line=60))

    def test_size_at_limit(self) -> None:
        """A response head of exactly max_size bytes is accepted."""
        base = response(b"HTTP/1.1 200 OK", b"Content-Length: 0", b"X: ")
        head = base[:-4] + b"a" * (300 - len(base)) + b"\r\n\r\n"
        self.assertEqual(len(parse_resp(head, limits=HeadLimits(max_size=300)).headers), 2)

    def test_size_over_limit(self) -> None:
        """A response head over max_size is 502."""
        base = response(b"HTTP/1.1 200 OK", b"Content-Length: 0", b"X: ")
        head = base[:-4] + b"a" * (301 - len(base)) + b"\r\n\r\n"
        self.assert_response_rejected(head, limits=HeadLimits(max_size=300))

    def test_count_at_limit(self) -> None:
        """Exactly max_count response fields are accepted."""
        head = response(b"HTTP/1.1 200 OK", b"Content-Length: 0", *[b"X-%d: v" % i for i in range(9)])
        self.assertEqual(len(parse_resp(head, limits=HeadLimits(max_count=10)).headers), 10)

    def test_count_over_limit(self) -> None:
        """More than max_count response fields is 502."""
        head = response(b"HTTP/1.1 200 OK", b"Content-Length: 0", *[b"X-%d: v" % i for i in range(10)])
        self.assert_response_rejected(head, limits=HeadLimits(max_count=10))


class LinearTimeTests(SynchronousTestCase):
    def test_whitespace_runs(self) -> None:
        """A value made of long whitespace runs parses (and fails) in linear time, not quadratic."""
        value = (b"a" + b" " * 4000) * 7
        head = request(b"GET / HTTP/1.1", b"X: " + value + b"\x01")
        exc = self.assertRaises(ParseError, parse_request, head, LIMITS)
        self.assertEqual(exc.status, 400)
        self.assertEqual(parse(request(b"GET / HTTP/1.1", b"X: " + value)).headers[1], (b"X", value.rstrip()))
