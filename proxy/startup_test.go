package proxy

import (
	"encoding/binary"
	"reflect"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func startupBody(t testing.TB, params map[string]string) []byte {
	t.Helper()
	b, err := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: params}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b[8:]
}

func TestParseStartup(t *testing.T) {
	st, err := parseStartup(196608, startupBody(t, map[string]string{
		"user": "alice", "application_name": "app", "DateStyle": "ISO, DMY",
		"options": `-c search_path=a,b --statement-timeout=5s -cwork_mem=64MB -c x.y=with\ space`,
	}))
	if err != nil {
		t.Fatal(err)
	}
	if st.user != "alice" || st.database != "alice" {
		t.Fatalf("user %q database %q", st.user, st.database)
	}
	want := [][2]string{
		{"DateStyle", "ISO, DMY"}, {"application_name", "app"}, {"search_path", "a,b"},
		{"statement_timeout", "5s"}, {"work_mem", "64MB"}, {"x.y", "with space"},
	}
	if !reflect.DeepEqual(st.params, want) {
		t.Fatalf("params = %q\nwant     %q", st.params, want)
	}
}

func TestParseStartupRejects(t *testing.T) {
	cases := map[string]struct {
		body []byte
		code string
	}{
		"no user":          {startupBody(t, map[string]string{"database": "x"}), CodeInvalidAuthorization},
		"replication":      {startupBody(t, map[string]string{"user": "u", "replication": "database"}), CodeFeatureNotSupported},
		"bad options":      {startupBody(t, map[string]string{"user": "u", "options": "-x"}), CodeInvalidParameterValue},
		"option no value":  {startupBody(t, map[string]string{"user": "u", "options": "-c foo"}), CodeInvalidParameterValue},
		"no terminator":    {[]byte("user\x00u\x00"), CodeProtocolViolation},
		"unterminated key": {[]byte("user"), CodeProtocolViolation},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := parseStartup(196608, tc.body)
			if err == nil {
				t.Fatal("accepted")
			}
			if r := errorResponse(err); r.Code != tc.code || r.Severity != "FATAL" {
				t.Fatalf("got %s %s (%s), want FATAL %s", r.Severity, r.Code, r.Message, tc.code)
			}
		})
	}
}

func TestNegotiateVersion(t *testing.T) {
	st, err := parseStartup(196610, startupBody(t, map[string]string{"user": "u", "_pq_.foo": "1"}))
	if err != nil {
		t.Fatal(err)
	}
	npv := negotiateVersion(st)
	if npv == nil || npv.NewestMinorProtocol != 0 || !reflect.DeepEqual(npv.UnrecognizedOptions, []string{"_pq_.foo"}) {
		t.Fatalf("got %+v", npv)
	}
	st, _ = parseStartup(196608, startupBody(t, map[string]string{"user": "u"}))
	if negotiateVersion(st) != nil {
		t.Fatal("3.0 without options must not negotiate")
	}
}

func TestSetConfigSQL(t *testing.T) {
	got := setConfigSQL([][2]string{{"TimeZone", "UTC"}, {"application_name", `it's a \ test`}, {"search_path", "a, b"}},
		map[string]string{"TimeZone": "UTC", "application_name": ""})
	want := `SELECT pg_catalog.set_config(E'application_name', E'it''s a \\ test', false), pg_catalog.set_config(E'search_path', E'a, b', false)`
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	if setConfigSQL([][2]string{{"TimeZone", "UTC"}}, map[string]string{"TimeZone": "UTC"}) != "" {
		t.Fatal("matching settings must need no statement")
	}
}

// FuzzParseStartup: no startup packet panics the parser, and what it
// accepts has a user and a database.
func FuzzParseStartup(f *testing.F) {
	f.Add(startupBody(f, map[string]string{"user": "u", "database": "d", "options": "-c a=b"}))
	f.Add(startupBody(f, map[string]string{"user": "u", "options": `-c\ x=\\`}))
	f.Add([]byte("user\x00\x00\x00"))
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, body []byte) {
		st, err := parseStartup(binary.BigEndian.Uint32([]byte{0, 3, 0, 0}), body)
		if err == nil && (st.user == "" || st.database == "") {
			t.Fatalf("accepted a startup without user or database: %+v", st)
		}
		if err != nil {
			if r := errorResponse(err); r.Code == CodeInternalError {
				t.Fatalf("unmapped error %v", err)
			}
		}
	})
}
