-- abort.lua - a message aborted after its body, then a second message on the same
-- connection; then a third aborted right after MAIL, and a fourth completed.
dofile((os.getenv("MGW_LUA_DIR") or ".") .. "/common.lua")

mt.set_timeout(10)
local conn = connect()
check(mt.negotiate(conn, nil, nil, nil), "mt.negotiate")
step(conn, SMFIR_CONTINUE, "mt.conninfo", mt.conninfo, "client.example", "127.0.0.1")
step(conn, SMFIR_CONTINUE, "mt.helo", mt.helo, "client.example")

local function message(n, complete)
	local tag = "message " .. n
	step(conn, SMFIR_CONTINUE, tag .. " mt.mailfrom", mt.mailfrom, "<sender" .. n .. "@example.org>")
	step(conn, SMFIR_CONTINUE, tag .. " mt.rcptto", mt.rcptto, "<rcpt" .. n .. "@example.com>")
	step(conn, SMFIR_CONTINUE, tag .. " mt.data", mt.data)
	step(conn, SMFIR_CONTINUE, tag .. " mt.header", mt.header, "Subject", tag)
	step(conn, SMFIR_CONTINUE, tag .. " mt.eoh", mt.eoh)
	step(conn, SMFIR_CONTINUE, tag .. " mt.bodystring", mt.bodystring, "Body of " .. tag .. ".\r\n")
	if complete then
		step(conn, SMFIR_ACCEPT, tag .. " mt.eom", mt.eom)
	else
		check(mt.abort(conn), tag .. " mt.abort")
	end
end

message(1, false)
message(2, true)
-- Postfix sends ABORT after every end of message; a repeated abort must be harmless
check(mt.abort(conn), "mt.abort after eom")

-- abort right after MAIL FROM
step(conn, SMFIR_CONTINUE, "message 3 mt.mailfrom", mt.mailfrom, "<sender3@example.org>")
check(mt.abort(conn), "message 3 mt.abort")

message(4, true)
check(mt.disconnect(conn), "mt.disconnect")
passed("abort")
