-- macros.lua - macros at every stage miltertest can send them for (connect, helo, mail,
-- rcpt), several pairs each, repeated, with odd values; every stage still continues.
dofile((os.getenv("MGW_LUA_DIR") or ".") .. "/common.lua")

mt.set_timeout(10)
local conn = connect()
check(mt.negotiate(conn, nil, nil, nil), "mt.negotiate")

check(mt.macro(conn, SMFIC_CONNECT, "j", "mx.example", "_", "client.example [127.0.0.1]",
	"{daemon_name}", "smtpd", "{client_addr}", "127.0.0.1", "{empty}", ""), "mt.macro(connect)")
-- a second macro packet for the same stage replaces the first
check(mt.macro(conn, SMFIC_CONNECT, "j", "mx2.example"), "mt.macro(connect again)")
step(conn, SMFIR_CONTINUE, "mt.conninfo", mt.conninfo, "client.example", "127.0.0.1")

check(mt.macro(conn, SMFIC_HELO, "{tls_version}", "TLSv1.3", "{cipher}", "TLS_AES_256_GCM_SHA384",
	"{cipher_bits}", "256", "{cert_subject}", "CN=client, O=Example \"Quoted\" = sign"), "mt.macro(helo)")
step(conn, SMFIR_CONTINUE, "mt.helo", mt.helo, "client.example")

check(mt.macro(conn, SMFIC_MAIL, "i", "4ABC123DEF", "{auth_type}", "PLAIN", "{auth_authen}", "user",
	"{mail_addr}", "sender@example.org", "{mail_host}", "example.org", "{mail_mailer}", "smtp",
	"{utf8}", "caf\195\169"), "mt.macro(mail)")
step(conn, SMFIR_CONTINUE, "mt.mailfrom", mt.mailfrom, "<sender@example.org>")

for n = 1, 5 do
	check(mt.macro(conn, SMFIC_RCPT, "i", "4ABC123DEF", "{rcpt_addr}", "r" .. n .. "@example.com",
		"{rcpt_host}", "example.com", "{rcpt_mailer}", "smtp"), "mt.macro(rcpt " .. n .. ")")
	step(conn, SMFIR_CONTINUE, "mt.rcptto(" .. n .. ")", mt.rcptto, "<r" .. n .. "@example.com>")
end

step(conn, SMFIR_CONTINUE, "mt.data", mt.data)
step(conn, SMFIR_CONTINUE, "mt.header", mt.header, "Subject", "macros")
step(conn, SMFIR_CONTINUE, "mt.eoh", mt.eoh)
step(conn, SMFIR_CONTINUE, "mt.bodystring", mt.bodystring, "macros\r\n")
step(conn, SMFIR_ACCEPT, "mt.eom", mt.eom)
check(mt.disconnect(conn), "mt.disconnect")
passed("macros")
