using System.ComponentModel;
using System.Globalization;
using Mono.Unix.Native;
using Vism.Abstractions;

namespace Vism.Native;

/// <summary>
/// Who may connect to a listening Unix socket: its owner, group and permission bits, applied between
/// bind and listen so no client can connect before they hold. Null parts are left as created (the
/// process's user and group, mode from the umask).
/// </summary>
/// <param name="Uid">Owner uid; null leaves it.</param>
/// <param name="Gid">Group gid; null leaves it.</param>
/// <param name="Mode">Permission bits (e.g. 0660); null leaves them.</param>
public sealed record SocketAccess(uint? Uid, uint? Gid, uint? Mode)
{
    /// <summary>Leaves the socket as created.</summary>
    public static readonly SocketAccess Unchanged = new(null, null, null);

    /// <summary>Resolves a user name or numeric uid; null with a reason when there is no such user.</summary>
    public static uint? ResolveUser(string user, out string? error)
    {
        error = null;
        if (uint.TryParse(user, NumberStyles.None, CultureInfo.InvariantCulture, out uint uid)) return uid;
        Passwd? pw = Syscall.getpwnam(user);
        if (pw is not null) return pw.pw_uid;
        error = $"no user '{user}' exists on this system (see getent passwd; a numeric uid is accepted too)";
        return null;
    }

    /// <summary>Resolves a group name or numeric gid; null with a reason when there is no such group.</summary>
    public static uint? ResolveGroup(string group, out string? error)
    {
        error = null;
        if (uint.TryParse(group, NumberStyles.None, CultureInfo.InvariantCulture, out uint gid)) return gid;
        Group? gr = Syscall.getgrnam(group);
        if (gr is not null) return gr.gr_gid;
        error = $"no group '{group}' exists on this system (see getent group; a numeric gid is accepted too)";
        return null;
    }

    /// <summary>Parses an octal mode string such as <c>"0660"</c>; null with a reason when it is not one.</summary>
    public static uint? ParseMode(string mode, out string? error)
    {
        error = null;
        string digits = mode.StartsWith("0o", StringComparison.OrdinalIgnoreCase) ? mode[2..] : mode;
        uint value = 0;
        bool ok = digits.Length is >= 1 and <= 4;
        foreach (char c in digits)
        {
            if (c is < '0' or > '7') { ok = false; break; }
            value = value * 8 + (uint)(c - '0');
        }
        if (ok && value <= 0x1FF) return value;
        error = $"'{mode}' is not a permission mode: write octal digits such as \"0660\" (owner and group read/write) or \"0600\"";
        return null;
    }

    /// <summary>Resolves the three settings (empty = unchanged); each problem goes to <paramref name="error"/> with its key.</summary>
    public static SocketAccess Resolve(string owner, string group, string mode, Action<string, string> error)
    {
        ArgumentNullException.ThrowIfNull(error);
        uint? uid = null, gid = null, bits = null;
        string? why;
        if (!string.IsNullOrEmpty(owner) && (uid = ResolveUser(owner, out why)) is null) error("socket-owner", why!);
        if (!string.IsNullOrEmpty(group) && (gid = ResolveGroup(group, out why)) is null) error("socket-group", why!);
        if (!string.IsNullOrEmpty(mode) && (bits = ParseMode(mode, out why)) is null) error("socket-mode", why!);
        return new SocketAccess(uid, gid, bits);
    }

    /// <summary>The access a transport applies: its own settings, each falling back to the host's.</summary>
    public static SocketAccess For(UnixSocketOptions options, HostDescription host)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(host);
        return Resolve(Pick(options.SocketOwner, host.SocketOwner), Pick(options.SocketGroup, host.SocketGroup),
            Pick(options.SocketMode, host.SocketMode), static (_, _) => { });
    }

    private static string Pick(string own, string host) => string.IsNullOrEmpty(own) ? host : own;

    /// <summary>Applies owner, group and mode to the socket file at <paramref name="path"/>.</summary>
    /// <exception cref="PosixException">chown or chmod failed (e.g. EPERM: only root may give a file away).</exception>
    public void Apply(string path)
    {
        if (Uid is not null || Gid is not null)
            PosixException.Check(Syscall.chown(path, Uid ?? uint.MaxValue, Gid ?? uint.MaxValue),
                $"chown({path}, {(Uid?.ToString(CultureInfo.InvariantCulture) ?? "-")}:{(Gid?.ToString(CultureInfo.InvariantCulture) ?? "-")})");
        if (Mode is uint m)
            PosixException.Check(Syscall.chmod(path, (FilePermissions)m), $"chmod({path}, {Convert.ToString(m, 8)})");
    }
}

/// <summary>
/// Options every Unix-socket transport shares: who may connect to its socket. Each key falls back to
/// the <c>[host]</c> key of the same name; empty in both leaves the socket as created.
/// </summary>
public abstract class UnixSocketOptions
{
    /// <summary>Owner (user name or uid) of the socket file; empty: the <c>[host]</c> socket-owner.</summary>
    [Description("Owner (user name or uid) of the socket file; empty = [host] socket-owner (else the user vism runs as)")]
    public string SocketOwner { get; set; } = "";

    /// <summary>Group (name or gid) of the socket file; empty: the <c>[host]</c> socket-group.</summary>
    [Description("Group (name or gid) of the socket file, e.g. the group QEMU runs in; empty = [host] socket-group")]
    public string SocketGroup { get; set; } = "";

    /// <summary>Permission bits of the socket file, octal (<c>"0660"</c>); empty: the <c>[host]</c> socket-mode.</summary>
    [Description("Permission bits of the socket file, octal such as \"0660\"; empty = [host] socket-mode (else from the umask)")]
    public string SocketMode { get; set; } = "";

    /// <summary>Reports an unknown user or group or a malformed mode on this section's keys.</summary>
    protected void ValidateAccess(OptionsValidationContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        SocketAccess.Resolve(SocketOwner, SocketGroup, SocketMode, context.Error);
    }
}
