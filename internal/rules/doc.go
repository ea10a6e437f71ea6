// Package rules implements the rule language of ucspi-tcp's tcprules and
// the lookup of tcpserver -x: parsing a rules file exactly as tcprules 0.88
// does (with the IPv6 variant's addresses), compiling it to the CDB records
// tcprules writes, and deciding a client against a compiled database in
// tcpserver's key order.
package rules
