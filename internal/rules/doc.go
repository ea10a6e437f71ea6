// Package rules implements the rule language of ucspi-tcp's tcprules and
// the lookup of tcpserver -x: parsing a rules file exactly as tcprules 0.88
// does (with the IPv6 variant's addresses), compiling it to the CDB records
// tcprules writes, and deciding a client against a compiled database in
// tcpserver's key order.
//
// # Syntax
//
// The rules file syntax, as tcprules 0.88 reads it on standard input, with
// the address search of Debian's ucspi-tcp-ipv6 variant:
//
//   - Lines are split on "\n"; a last line without "\n" counts. An empty
//     line, or one whose first byte is "#", is skipped. Then the trailing
//     run of "\n", space and tab is removed (leading blanks and "\r" stay).
//
//   - A line with no ":" at all is skipped silently, as tcprules does
//     (whitespace-only lines included).
//
//   - The address ends at the first ":" that is immediately followed by
//     "allow" or "deny". This is what the IPv6 variant does, and it is the
//     same as tcprules' "first colon" whenever the address has no colon of
//     its own. A line that has a ":" but none followed by allow or deny is
//     a parse error (the IPv6 tcprules loops forever on it; the IPv4 one
//     rejects it, and so do we). Keys are the literal text: no CIDR, no
//     canonical form (tcpserver looks clients up by the text it prints).
//     See "IPv6 addresses" below.
//
//   - After the keyword, zero or more settings ",NAME=QVALUEQ": NAME is
//     every byte up to the next "=", Q is any single byte, VALUE runs to
//     the next Q. After the closing Q comes "," or the end of the line.
//     No escapes, no unset syntax ("VAR=" alone is an error).
//
//   - Range expansion: when the address has no "=" and no "@" but a "-",
//     the first "-" splits a decimal range inside one dot-separated
//     component: "1.2.3.37-53", "10.2-3.", "1.2.3.-2" (empty means 0); the
//     top is clamped to 255, a reversed range gives no key at all, and a
//     non-decimal bound is a parse error. Only "." separates components,
//     as in both tcprules variants: "::ffff:1.2.3.1-3" expands to three
//     keys, while "2001:db8::1-3" is an error because "2001:db8::1" is not
//     a number. Exactly what both variants do, verified on their binaries.
//
// # IPv6 addresses
//
// These lines are accepted, with the keys shown:
//
//	::1:allow                          "::1"
//	2001:db8::1:allow,RELAYCLIENT=""   "2001:db8::1"
//	2001:db8:1::allow                  "2001:db8:1:" (a prefix: ends in ":")
//	::ffff:192.0.2.:allow              "::ffff:192.0.2." (IPv4 clients of a dual-stack tcpserver)
//	::allow                            ":" (every IPv6 client)
//	a:b:allow                          "a:b"
//	2001:db8::/32:allow                "2001:db8::/32" (literal; never matches)
//
// The IPv4 tcprules rejects all of them; everywhere else the two variants
// and this package agree, except that the IPv6 tcprules never returns on a
// line without a ":" (skipped here, as by the IPv4 one) or on a bad
// keyword (rejected here, as by the IPv4 one).
package rules
