//! The Java agent `agent-vault run` puts in `JAVA_TOOL_OPTIONS`: a jar whose one class installs a
//! default `java.net.Authenticator` that answers the proxy's 407 with the run's token and vault
//! (read from `AGENT_VAULT_TOKEN` / `AGENT_VAULT_VAULT` when asked, so the token is in no file and
//! on no command line), and only for the agent-vault proxy's own host and port. Without it a JVM
//! sends no proxy credentials: the JDK reads proxy host and port from system properties but has
//! no property for a proxy password.
//!
//! The class is assembled here, byte by byte, from the Java below, so the repository ships no
//! binary and building needs no JDK. It targets class-file version 49 (Java 5), which every JVM
//! since loads and which needs no stack-map frames:
//!
//! ```java
//! public class AgentVaultProxyAuth extends java.net.Authenticator {
//!     private static String target;                     // "host:port" of the proxy
//!     public static void premain(String args, java.lang.instrument.Instrumentation i) {
//!         target = args;
//!         java.net.Authenticator.setDefault(new AgentVaultProxyAuth());
//!     }
//!     protected java.net.PasswordAuthentication getPasswordAuthentication() {
//!         if (getRequestorType() != RequestorType.PROXY) return null;
//!         if (!(getRequestingHost() + ":" + getRequestingPort()).equals(target)) return null;
//!         String token = System.getenv("AGENT_VAULT_TOKEN");
//!         String vault = System.getenv("AGENT_VAULT_VAULT");
//!         if (token == null || vault == null) return null;
//!         return new java.net.PasswordAuthentication(token, vault.toCharArray());
//!     }
//! }
//! ```

/// The agent's class (and so its `Premain-Class`).
const CLASS: &str = "AgentVaultProxyAuth";

/// A class file's constant pool, deduplicated.
#[derive(Default)]
struct Pool {
    entries: Vec<Vec<u8>>,
}

impl Pool {
    fn add(&mut self, entry: Vec<u8>) -> u16 {
        if let Some(i) = self.entries.iter().position(|e| *e == entry) {
            return (i + 1) as u16;
        }
        self.entries.push(entry);
        self.entries.len() as u16
    }

    fn utf8(&mut self, text: &str) -> u16 {
        let mut e = vec![1];
        e.extend_from_slice(&(text.len() as u16).to_be_bytes());
        e.extend_from_slice(text.as_bytes());
        self.add(e)
    }

    fn tagged(&mut self, tag: u8, a: u16, b: Option<u16>) -> u16 {
        let mut e = vec![tag];
        e.extend_from_slice(&a.to_be_bytes());
        if let Some(b) = b {
            e.extend_from_slice(&b.to_be_bytes());
        }
        self.add(e)
    }

    fn class(&mut self, name: &str) -> u16 {
        let n = self.utf8(name);
        self.tagged(7, n, None)
    }

    fn string(&mut self, text: &str) -> u16 {
        let s = self.utf8(text);
        self.tagged(8, s, None)
    }

    fn member(&mut self, tag: u8, class: &str, name: &str, descriptor: &str) -> u16 {
        let c = self.class(class);
        let n = self.utf8(name);
        let d = self.utf8(descriptor);
        let nat = self.tagged(12, n, Some(d));
        self.tagged(tag, c, Some(nat))
    }

    fn field(&mut self, class: &str, name: &str, descriptor: &str) -> u16 {
        self.member(9, class, name, descriptor)
    }

    fn method(&mut self, class: &str, name: &str, descriptor: &str) -> u16 {
        self.member(10, class, name, descriptor)
    }
}

/// Bytecode with 16-bit constant-pool operands.
struct Code(Vec<u8>);

impl Code {
    fn op(&mut self, opcode: u8) -> &mut Self {
        self.0.push(opcode);
        self
    }

    fn op16(&mut self, opcode: u8, operand: u16) -> &mut Self {
        self.0.push(opcode);
        self.0.extend_from_slice(&operand.to_be_bytes());
        self
    }

    fn pc(&self) -> usize {
        self.0.len()
    }
}

// The opcodes used (JVMS §6.5).
const ACONST_NULL: u8 = 0x01;
const BIPUSH: u8 = 0x10;
const LDC_W: u8 = 0x13;
const ALOAD_0: u8 = 0x2a;
const ALOAD_1: u8 = 0x2b;
const ALOAD_2: u8 = 0x2c;
const ASTORE_1: u8 = 0x4c;
const ASTORE_2: u8 = 0x4d;
const DUP: u8 = 0x59;
const IFEQ: u8 = 0x99;
const IF_ACMPNE: u8 = 0xa6;
const ARETURN: u8 = 0xb0;
const RETURN: u8 = 0xb1;
const GETSTATIC: u8 = 0xb2;
const PUTSTATIC: u8 = 0xb3;
const INVOKEVIRTUAL: u8 = 0xb6;
const INVOKESPECIAL: u8 = 0xb7;
const INVOKESTATIC: u8 = 0xb8;
const NEW: u8 = 0xbb;
const IFNULL: u8 = 0xc6;

/// The class file of the Java in this module's documentation.
fn class_file() -> Vec<u8> {
    const AUTH: &str = "java/net/Authenticator";
    const SB: &str = "java/lang/StringBuilder";
    const STR: &str = "java/lang/String";
    const REQUESTOR: &str = "java/net/Authenticator$RequestorType";
    const PASSWORD: &str = "java/net/PasswordAuthentication";
    let mut pool = Pool::default();
    let this = pool.class(CLASS);
    let super_class = pool.class(AUTH);
    let target = pool.field(CLASS, "target", "Ljava/lang/String;");
    let super_init = pool.method(AUTH, "<init>", "()V");
    let this_init = pool.method(CLASS, "<init>", "()V");
    let set_default = pool.method(AUTH, "setDefault", "(Ljava/net/Authenticator;)V");
    let requestor_type = pool.method(
        CLASS,
        "getRequestorType",
        "()Ljava/net/Authenticator$RequestorType;",
    );
    let proxy = pool.field(REQUESTOR, "PROXY", "Ljava/net/Authenticator$RequestorType;");
    let sb = pool.class(SB);
    let sb_init = pool.method(SB, "<init>", "()V");
    let host = pool.method(CLASS, "getRequestingHost", "()Ljava/lang/String;");
    let port = pool.method(CLASS, "getRequestingPort", "()I");
    let append_str = pool.method(
        SB,
        "append",
        "(Ljava/lang/String;)Ljava/lang/StringBuilder;",
    );
    let append_char = pool.method(SB, "append", "(C)Ljava/lang/StringBuilder;");
    let append_int = pool.method(SB, "append", "(I)Ljava/lang/StringBuilder;");
    let to_string = pool.method(SB, "toString", "()Ljava/lang/String;");
    let equals = pool.method(STR, "equals", "(Ljava/lang/Object;)Z");
    let getenv = pool.method(
        "java/lang/System",
        "getenv",
        "(Ljava/lang/String;)Ljava/lang/String;",
    );
    let token_var = pool.string("AGENT_VAULT_TOKEN");
    let vault_var = pool.string("AGENT_VAULT_VAULT");
    let to_chars = pool.method(STR, "toCharArray", "()[C");
    let password = pool.class(PASSWORD);
    let password_init = pool.method(PASSWORD, "<init>", "(Ljava/lang/String;[C)V");
    let code_attr = pool.utf8("Code");

    let mut init = Code(Vec::new());
    init.op(ALOAD_0).op16(INVOKESPECIAL, super_init).op(RETURN);

    let mut premain = Code(Vec::new());
    premain
        .op(ALOAD_0)
        .op16(PUTSTATIC, target)
        .op16(NEW, this)
        .op(DUP)
        .op16(INVOKESPECIAL, this_init)
        .op16(INVOKESTATIC, set_default)
        .op(RETURN);

    // Branches jump to the trailing `return null`; their offsets are patched once it is placed.
    let mut get = Code(Vec::new());
    let mut branches = Vec::new();
    get.op(ALOAD_0)
        .op16(INVOKEVIRTUAL, requestor_type)
        .op16(GETSTATIC, proxy);
    branches.push(get.pc());
    get.op16(IF_ACMPNE, 0)
        .op16(NEW, sb)
        .op(DUP)
        .op16(INVOKESPECIAL, sb_init)
        .op(ALOAD_0)
        .op16(INVOKEVIRTUAL, host)
        .op16(INVOKEVIRTUAL, append_str);
    get.0.extend_from_slice(&[BIPUSH, b':']);
    get.op16(INVOKEVIRTUAL, append_char)
        .op(ALOAD_0)
        .op16(INVOKEVIRTUAL, port)
        .op16(INVOKEVIRTUAL, append_int)
        .op16(INVOKEVIRTUAL, to_string)
        .op16(GETSTATIC, target)
        .op16(INVOKEVIRTUAL, equals);
    branches.push(get.pc());
    get.op16(IFEQ, 0)
        .op16(LDC_W, token_var)
        .op16(INVOKESTATIC, getenv)
        .op(ASTORE_1)
        .op16(LDC_W, vault_var)
        .op16(INVOKESTATIC, getenv)
        .op(ASTORE_2)
        .op(ALOAD_1);
    branches.push(get.pc());
    get.op16(IFNULL, 0).op(ALOAD_2);
    branches.push(get.pc());
    get.op16(IFNULL, 0)
        .op16(NEW, password)
        .op(DUP)
        .op(ALOAD_1)
        .op(ALOAD_2)
        .op16(INVOKEVIRTUAL, to_chars)
        .op16(INVOKESPECIAL, password_init)
        .op(ARETURN);
    let null_at = get.pc();
    get.op(ACONST_NULL).op(ARETURN);
    for at in branches {
        let offset = (null_at - at) as u16;
        get.0[at + 1..at + 3].copy_from_slice(&offset.to_be_bytes());
    }

    const PUBLIC: u16 = 0x0001;
    const PRIVATE: u16 = 0x0002;
    const PROTECTED: u16 = 0x0004;
    const STATIC: u16 = 0x0008;
    const SUPER: u16 = 0x0020;
    let methods = [
        (
            PUBLIC,
            pool.utf8("<init>"),
            pool.utf8("()V"),
            init,
            1u16,
            1u16,
        ),
        (
            PUBLIC | STATIC,
            pool.utf8("premain"),
            pool.utf8("(Ljava/lang/String;Ljava/lang/instrument/Instrumentation;)V"),
            premain,
            2,
            2,
        ),
        (
            PROTECTED,
            pool.utf8("getPasswordAuthentication"),
            pool.utf8("()Ljava/net/PasswordAuthentication;"),
            get,
            4,
            3,
        ),
    ];
    let field_name = pool.utf8("target");
    let field_type = pool.utf8("Ljava/lang/String;");

    let mut out = Vec::new();
    let u16s = |out: &mut Vec<u8>, values: &[u16]| {
        for v in values {
            out.extend_from_slice(&v.to_be_bytes());
        }
    };
    out.extend_from_slice(&0xCAFE_BABE_u32.to_be_bytes());
    u16s(&mut out, &[0, 49, pool.entries.len() as u16 + 1]);
    for entry in &pool.entries {
        out.extend_from_slice(entry);
    }
    u16s(&mut out, &[PUBLIC | SUPER, this, super_class, 0]);
    u16s(&mut out, &[1, PRIVATE | STATIC, field_name, field_type, 0]);
    u16s(&mut out, &[methods.len() as u16]);
    for (flags, name, descriptor, code, max_stack, max_locals) in &methods {
        u16s(&mut out, &[*flags, *name, *descriptor, 1, code_attr]);
        let attr_len = 2 + 2 + 4 + code.0.len() + 2 + 2;
        out.extend_from_slice(&(attr_len as u32).to_be_bytes());
        u16s(&mut out, &[*max_stack, *max_locals]);
        out.extend_from_slice(&(code.0.len() as u32).to_be_bytes());
        out.extend_from_slice(&code.0);
        u16s(&mut out, &[0, 0]);
    }
    u16s(&mut out, &[0]);
    out
}

/// A zip archive of `files`, stored without compression (a jar is a zip with a manifest).
fn zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    // 1980-01-01 00:00, the zip epoch: the jar is the same bytes on every run.
    const TIME: u16 = 0;
    const DATE: u16 = (1 << 5) | 1;
    for (name, data) in files {
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let offset = out.len() as u32;
        let common = |buf: &mut Vec<u8>| {
            for v in [0u16, 0, TIME, DATE] {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            buf.extend_from_slice(&crc.sum().to_le_bytes());
            buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
            buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
            buf.extend_from_slice(&(name.len() as u16).to_le_bytes());
            buf.extend_from_slice(&0u16.to_le_bytes());
        };
        out.extend_from_slice(&0x0403_4b50_u32.to_le_bytes());
        out.extend_from_slice(&10u16.to_le_bytes());
        common(&mut out);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);

        central.extend_from_slice(&0x0201_4b50_u32.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes());
        central.extend_from_slice(&10u16.to_le_bytes());
        common(&mut central);
        for v in [0u16, 0, 0] {
            central.extend_from_slice(&v.to_le_bytes());
        }
        central.extend_from_slice(&0u32.to_le_bytes());
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let central_at = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50_u32.to_le_bytes());
    for v in [0u16, 0, files.len() as u16, files.len() as u16] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&central_at.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// The agent jar: a manifest naming the premain class, and the class.
pub(super) fn jar() -> Vec<u8> {
    let manifest = format!(
        "Manifest-Version: 1.0\r\nPremain-Class: {CLASS}\r\nCreated-By: agent-vault\r\n\r\n"
    );
    let class = class_file();
    zip(&[
        ("META-INF/MANIFEST.MF", manifest.as_bytes()),
        (&format!("{CLASS}.class"), &class),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_class_file_has_the_expected_shape() {
        let class = class_file();
        assert_eq!(&class[..8], &[0xca, 0xfe, 0xba, 0xbe, 0, 0, 0, 49]);
        let has = |s: &str| class.windows(s.len()).any(|w| w == s.as_bytes());
        for name in [
            "premain",
            "getPasswordAuthentication",
            "AGENT_VAULT_TOKEN",
            "AGENT_VAULT_VAULT",
            "java/net/Authenticator$RequestorType",
        ] {
            assert!(has(name), "{name}");
        }
        assert_eq!(class_file(), class, "the same bytes every time");
    }

    #[test]
    fn the_jar_is_a_zip_with_a_manifest_and_the_class() {
        let jar = jar();
        assert_eq!(&jar[..4], b"PK\x03\x04");
        let end = &jar[jar.len() - 22..];
        assert_eq!(&end[..4], b"PK\x05\x06");
        assert_eq!(u16::from_le_bytes([end[10], end[11]]), 2, "two entries");
        let has = |s: &[u8]| jar.windows(s.len()).any(|w| w == s);
        assert!(has(b"Premain-Class: AgentVaultProxyAuth\r\n"));
        assert!(has(b"AgentVaultProxyAuth.class"));
        assert!(jar.len() < 2048, "{} bytes", jar.len());
    }
}
