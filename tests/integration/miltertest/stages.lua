-- stages.lua - every stage of one message, each reply checked; macros before stages.
dofile((os.getenv("MGW_LUA_DIR") or ".") .. "/common.lua")

mt.set_timeout(10)
local conn = connect()
check(mt.negotiate(conn, nil, nil, nil), "mt.negotiate")

check(mt.macro(conn, SMFIC_CONNECT, "j", "mx.example", "{daemon_name}", "mx.example",
	"{daemon_addr}", "127.0.0.1", "v", "Postfix 3.7.11", "_", "client.example [127.0.0.1]"),
	"mt.macro(connect)")
step(conn, SMFIR_CONTINUE, "mt.conninfo", mt.conninfo, "client.example", "127.0.0.1")

check(mt.macro(conn, SMFIC_HELO, "{tls_version}", "TLSv1.3"), "mt.macro(helo)")
step(conn, SMFIR_CONTINUE, "mt.helo", mt.helo, "client.example")

check(mt.macro(conn, SMFIC_MAIL, "{mail_addr}", "sender@example.org", "{mail_host}", "example.org",
	"{mail_mailer}", "smtp"), "mt.macro(mail)")
step(conn, SMFIR_CONTINUE, "mt.mailfrom", mt.mailfrom, "<sender@example.org>", "BODY=8BITMIME", "SIZE=1234")

check(mt.macro(conn, SMFIC_RCPT, "{rcpt_addr}", "a@example.com", "{rcpt_host}", "example.com",
	"{rcpt_mailer}", "smtp"), "mt.macro(rcpt 1)")
step(conn, SMFIR_CONTINUE, "mt.rcptto(1)", mt.rcptto, "<a@example.com>")
check(mt.macro(conn, SMFIC_RCPT, "i", "4ABC123DEF", "{rcpt_addr}", "b@example.net"), "mt.macro(rcpt 2)")
step(conn, SMFIR_CONTINUE, "mt.rcptto(2)", mt.rcptto, "<b@example.net>", "NOTIFY=NEVER")

step(conn, SMFIR_CONTINUE, "mt.data", mt.data)

step(conn, SMFIR_CONTINUE, "mt.header(From)", mt.header, "From", "Sender <sender@example.org>")
step(conn, SMFIR_CONTINUE, "mt.header(To)", mt.header, "To", "a@example.com, b@example.net")
step(conn, SMFIR_CONTINUE, "mt.header(Subject)", mt.header, "Subject", "miltertest stages")
step(conn, SMFIR_CONTINUE, "mt.header(X-Folded)", mt.header, "X-Folded", "first\n\tsecond")
step(conn, SMFIR_CONTINUE, "mt.header(empty)", mt.header, "X-Empty", "")

step(conn, SMFIR_CONTINUE, "mt.eoh", mt.eoh)

step(conn, SMFIR_CONTINUE, "mt.bodystring(1)", mt.bodystring, "Hello.\r\n")
step(conn, SMFIR_CONTINUE, "mt.bodystring(2)", mt.bodystring, ".a dot line\r\n\r\nlast line\r\n")

step(conn, SMFIR_ACCEPT, "mt.eom", mt.eom)

check(mt.disconnect(conn), "mt.disconnect")
passed("stages")
