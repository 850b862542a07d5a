using System.ComponentModel;
using System.Globalization;
using System.Text.RegularExpressions;
using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.Core;
using Vism.Native;

namespace Vism.Host.Config;

/// <summary>The format of the host's log lines.</summary>
public enum LogFormat
{
    /// <summary>One line per message: time, level, category, message (the console "simple" formatter).</summary>
    Text,

    /// <summary>One JSON object per line (the console "json" formatter).</summary>
    Json,

    /// <summary>journald's form: a <c>&lt;N&gt;</c> syslog priority prefix, no timestamp (the console "systemd" formatter).</summary>
    Systemd,
}

/// <summary>
/// What a config section checks after <see cref="OptionsSchema"/> has bound it: which keys were given
/// (and had the right type), and where to report a value that is out of range. Errors carry the
/// section's file, line and column like binding errors do.
/// </summary>
public sealed class SectionCheck(ConfigErrors errors, TomlTable table, string path, IReadOnlySet<string> bound, string directory)
{
    /// <summary>The section's dotted path, e.g. <c>device[0]</c>.</summary>
    public string Path { get; } = path;

    /// <summary>The section's table.</summary>
    public TomlTable Table { get; } = table;

    /// <summary>Whether <paramref name="key"/> was given with a value of the right type.</summary>
    public bool Given(string key) => bound.Contains(key);

    /// <summary>Reports a bad value of <paramref name="key"/> (at the value; at the section when the key is absent).</summary>
    public void Error(string key, string message) =>
        errors.Add(Table.TryGet(key, out TomlEntry? e) ? e.Value.Pos : Table.Pos, $"{Path}.{key}", message);

    /// <summary>Reports a problem with <paramref name="key"/> itself (at the key).</summary>
    public void KeyError(string key, string message) =>
        errors.Add(Table.TryGet(key, out TomlEntry? e) ? e.KeyPos : Table.Pos, $"{Path}.{key}", message);

    /// <summary>Reports a bad item of an array value.</summary>
    public void ItemError(string key, int index, string message) =>
        errors.Add(Table.TryGet(key, out TomlEntry? e) && e.Value is TomlArray a && index < a.Items.Count ? a.Items[index].Pos : Table.Pos,
            $"{Path}.{key}[{index}]", message);

    /// <summary>A path from the file made absolute against the config file's directory.</summary>
    public string FullPath(string path) => System.IO.Path.GetFullPath(path, directory);

    /// <summary>Binds <paramref name="table"/> to a new <typeparamref name="T"/> through <paramref name="schema"/>
    /// and returns it with the check that follows.</summary>
    internal static (T Value, SectionCheck Check) Bind<T>(OptionsSchema schema, TomlTable table, string path, IReadOnlySet<string> reserved,
        ConfigErrors errors, string directory)
    {
        var value = (T)schema.Bind(table, path, reserved, errors, out IReadOnlySet<string> bound, listReserved: true);
        return (value, new SectionCheck(errors, table, path, bound, directory));
    }
}

/// <summary>Reads a 64-bit group ID: a non-negative integer, or a hex string such as <c>"0x1234abcd"</c>.</summary>
public sealed class GidConverter : ITomlConverter
{
    /// <inheritdoc />
    public string TypeName => "integer or hex string";

    /// <inheritdoc />
    public bool TryConvert(TomlNode node, out object? value, out string? error)
    {
        error = null;
        value = node switch
        {
            TomlScalar { Value: long g } when g >= 0 => (ulong)g,
            TomlScalar { Value: string s } when s.StartsWith("0x", StringComparison.OrdinalIgnoreCase)
                && ulong.TryParse(s.AsSpan(2), NumberStyles.AllowHexSpecifier, null, out ulong x) => x,
            _ => null,
        };
        if (value is not null) return true;
        error = "expected a non-negative integer or a hex string such as \"0x1234abcd\" (64 bits)";
        return false;
    }
}

/// <summary>
/// The <c>[host]</c> section. Every public property is a key (kebab-case, or <see cref="ConfigKeyAttribute"/>),
/// bound by <see cref="OptionsSchema"/> like plugin options and listed by <c>vism plugins</c>; range and
/// path checks live in <see cref="Checked"/>. A new key is one property with its description.
/// </summary>
public sealed record HostSettings
{
    /// <summary>Default state directory.</summary>
    public const string DefaultStateDirectory = "/var/lib/vism";

    /// <summary>Default socket directory.</summary>
    public const string DefaultSocketDirectory = "/run/vism";

    /// <summary>The schema of <c>[host]</c>.</summary>
    public static readonly OptionsSchema Schema = OptionsSchema.Create(typeof(HostSettings), new HashSet<string>());

    /// <summary><c>gid</c>; null derives it from /etc/machine-id.</summary>
    [Description("Group ID (VIRTIO_ISM gid) shared by every device of this host: an integer or a hex string \"0x...\"; default derived from /etc/machine-id")]
    [TomlConverter(typeof(GidConverter))]
    public ulong? Gid { get; init; }

    /// <summary><c>sharing</c>.</summary>
    [Description("How attached regions may be shared: pair (allocator + one attacher, the v1 text) or multi")]
    public Sharing Sharing { get; init; } = Sharing.Pair;

    /// <summary><c>state-dir</c>, absolute.</summary>
    [ConfigKey("state-dir")]
    [Description("Directory for state that survives a restart and the status socket (relative: to this file's directory)")]
    public string StateDirectory { get; init; } = DefaultStateDirectory;

    /// <summary><c>socket-dir</c>, absolute.</summary>
    [ConfigKey("socket-dir")]
    [Description("Default directory for the transports' Unix sockets (relative: to this file's directory)")]
    public string SocketDirectory { get; init; } = DefaultSocketDirectory;

    /// <summary><c>plugin-paths</c>, absolute, in addition to <c>plugins/</c> next to the program.</summary>
    [Description("More plugin directories, searched after plugins/ next to the program (relative: to this file's directory)")]
    public IReadOnlyList<string> PluginPaths { get; init; } = [];

    /// <summary><c>log-level</c>.</summary>
    [Description("Lowest level logged (vism run --log-level overrides it)")]
    public LogLevel LogLevel { get; init; } = LogLevel.Information;

    /// <summary><c>log-format</c>.</summary>
    [Description("Log line format: text, json (one object per line) or systemd (journald priorities); vism run --log-format overrides it")]
    public LogFormat LogFormat { get; init; } = LogFormat.Text;

    /// <summary><c>loops</c>: number of device loop threads. Default 1: devices on one loop route
    /// a notify to each other inline, in the turn that saw it, with no cross-thread wake-up (the
    /// event-path benchmark measured ~2 us against ~85 us for a round trip across two loops).</summary>
    [Description("Device loop threads (1..256); default 1: devices on one loop route notifies to each other inline")]
    public int Loops { get; init; } = 1;

    /// <summary><c>busy-poll</c>: how long a device loop keeps polling after its last event before it
    /// sleeps (<see cref="Vism.Native.EventLoop.BusyPoll"/>); zero sleeps at once.</summary>
    [Description("After work, a device loop keeps polling this long before it sleeps (0s..10ms); 0s sleeps at once")]
    public TimeSpan BusyPoll { get; init; }

    /// <summary><c>socket-owner</c>: default owner of the transports' sockets.</summary>
    [Description("Default owner (user name or uid) of every transport socket; a transport's socket-owner overrides it; empty = the user vism runs as")]
    public string SocketOwner { get; init; } = "";

    /// <summary><c>socket-group</c>: default group of the transports' sockets.</summary>
    [Description("Default group (name or gid) of every transport socket, e.g. the group QEMU runs in; a transport's socket-group overrides it")]
    public string SocketGroup { get; init; } = "";

    /// <summary><c>socket-mode</c>: default permission bits of the transports' sockets.</summary>
    [Description("Default permission bits of every transport socket, octal such as \"0660\"; a transport's socket-mode overrides it; empty = from the umask")]
    public string SocketMode { get; init; } = "";

    /// <summary>What plugins see of the host.</summary>
    /// <param name="gid">The host's actual gid.</param>
    public HostDescription Describe(ulong gid) => new()
    {
        Gid = gid,
        StateDirectory = StateDirectory,
        SocketDirectory = SocketDirectory,
        SocketOwner = SocketOwner,
        SocketGroup = SocketGroup,
        SocketMode = SocketMode,
    };

    /// <summary>Checks ranges and names and makes paths absolute.</summary>
    public HostSettings Checked(SectionCheck check)
    {
        ArgumentNullException.ThrowIfNull(check);
        HostSettings host = this;
        if (check.Given("state-dir")) host = host with { StateDirectory = Directory(check, "state-dir", StateDirectory) ?? DefaultStateDirectory };
        if (check.Given("socket-dir")) host = host with { SocketDirectory = Directory(check, "socket-dir", SocketDirectory) ?? DefaultSocketDirectory };
        var plugins = new List<string>();
        for (int i = 0; i < PluginPaths.Count; i++)
        {
            string p = check.FullPath(PluginPaths[i]);
            if (System.IO.Directory.Exists(p)) plugins.Add(p);
            else check.ItemError("plugin-paths", i, $"plugin directory {p} does not exist");
        }
        host = host with { PluginPaths = plugins };
        if (Loops is < 1 or > 256)
            check.Error("loops", $"{Loops} loops: choose 1..256 (default 1: devices on one loop route notifies to each other inline)");
        if (BusyPoll < TimeSpan.Zero || BusyPoll > TimeSpan.FromMilliseconds(10))
            check.Error("busy-poll", $"{TomlValues.FormatDuration(BusyPoll)}: choose 0s..10ms (default 0s: loops sleep as soon as they are idle)");
        SocketAccess.Resolve(SocketOwner, SocketGroup, SocketMode, check.Error);
        return host;
    }

    private static string? Directory(SectionCheck check, string key, string value)
    {
        if (value.Length != 0) return check.FullPath(value);
        check.Error(key, "expected a directory path, found an empty string");
        return null;
    }
}

/// <summary>
/// The keys of one <c>[[device]]</c> table (its plugin sections aside), bound by <see cref="OptionsSchema"/>
/// like plugin options and listed by <c>vism plugins</c>. A new device key is one property with its
/// description, plus its check in <see cref="Check"/> when it has a range.
/// </summary>
public sealed partial class DeviceSection
{
    /// <summary>The plugin sections of a device: consumed by the loader, not by this schema.</summary>
    public static readonly IReadOnlySet<string> PluginSections = new HashSet<string>(StringComparer.Ordinal) { "transport", "memory", "events" };

    /// <summary>The schema of <c>[[device]]</c>.</summary>
    public static readonly OptionsSchema Schema = OptionsSchema.Create(typeof(DeviceSection), PluginSections);

    private const ulong PageSize = TransportRules.PageSize;

    /// <summary><c>name</c> (required).</summary>
    [Description("Device name (required): 1-64 letters, digits, '.', '_' or '-'; it names the default socket and files")]
    public string? Name { get; set; }

    /// <summary><c>device-id</c>.</summary>
    [Description("Virtio device ID presented to the guest (ISM is 44)")]
    public int DeviceId { get; set; } = (int)Virtio.IsmDeviceId;

    /// <summary><c>region-size</c>.</summary>
    [Description("Size of every region: a power of two of at least 4KiB")]
    public ulong RegionSize { get; set; } = ConfigLoader.DefaultRegionSize;

    /// <summary><c>window-size</c>; null: <see cref="ConfigLoader.DefaultWindowSize"/> unless max-regions is given.</summary>
    [Description("REGIONS + NOTIFY window (one PCI BAR), a power of two; default 64MiB; give this or max-regions")]
    public ulong? WindowSize { get; set; }

    /// <summary><c>max-regions</c>; null: from the window size.</summary>
    [Description("Regions the device must hold (1..65536): the window is the smallest that fits them; give this or window-size")]
    public int? MaxRegions { get; set; }

    /// <summary><c>notify-size</c>.</summary>
    [Description("Bytes of NOTIFY window per region: a power of two from 1 to 4096")]
    public ulong NotifySize { get; set; } = ConfigLoader.DefaultNotifySize;

    /// <summary><c>requests-per-turn</c>: see <see cref="DeviceLimits.RequestsPerTurn"/>.</summary>
    [Description("Control requests one device serves in a loop turn before yielding to its neighbours (1..65536)")]
    public int RequestsPerTurn { get; set; } = DeviceLimits.Default.RequestsPerTurn;

    /// <summary><c>descriptors-per-turn</c>: see <see cref="DeviceLimits.DescriptorsPerTurn"/>.</summary>
    [Description("Descriptors one device walks in a loop turn before yielding (1..16777216; one chain, at most the queue size, is always walked whole)")]
    public int DescriptorsPerTurn { get; set; } = DeviceLimits.Default.DescriptorsPerTurn;

    /// <summary><c>max-in-flight</c>: see <see cref="DeviceLimits.MaxInFlight"/>.</summary>
    [Description("Chains one device holds popped and not yet completed, over all its queues (2..65536)")]
    public int MaxInFlight { get; set; } = DeviceLimits.Default.MaxInFlight;

    /// <summary>The fairness limits these keys give.</summary>
    public DeviceLimits Limits => new() { RequestsPerTurn = RequestsPerTurn, DescriptorsPerTurn = DescriptorsPerTurn, MaxInFlight = MaxInFlight };

    /// <summary>Checks each given key's range; true when the keys allow a layout to be computed.</summary>
    public bool Check(SectionCheck check)
    {
        ArgumentNullException.ThrowIfNull(check);
        bool ok = true;
        void Fail(string key, string message)
        {
            check.Error(key, message);
            ok = false;
        }
        if (check.Given("name") && !NamePattern().IsMatch(Name!))
            Fail("name", $"'{Name}' is not a device name: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (it becomes part of socket and file names)");
        if (DeviceId is < 1 || (uint)DeviceId > ConfigLoader.MaxDeviceId)
            Fail("device-id", $"{DeviceId} is not a virtio device ID: choose 1..{ConfigLoader.MaxDeviceId} (ISM is {Virtio.IsmDeviceId})");
        if (RegionSize < PageSize || !ulong.IsPow2(RegionSize))
            Fail("region-size", $"{Sizes.Format(RegionSize)} is not a valid region size: it must be a power of two of at least 4KiB");
        if (WindowSize is ulong ws && !ulong.IsPow2(ws))
            Fail("window-size", $"{Sizes.Format(ws)} is not a power of two (the window is one PCI BAR)");
        else if (WindowSize > ConfigLoader.MaxWindowSize)
            Fail("window-size", $"{Sizes.Format(WindowSize.Value)} is too large: at most {Sizes.Format(ConfigLoader.MaxWindowSize)}");
        if (MaxRegions is int mr && mr is < 1 or > ConfigLoader.MaxRegionsLimit)
            Fail("max-regions", $"{mr} regions: choose 1..{ConfigLoader.MaxRegionsLimit}");
        if (NotifySize is 0 or > PageSize || !ulong.IsPow2(NotifySize))
            Fail("notify-size", $"{NotifySize} bytes: notify-size must be a power of two from 1 to 4096");
        if (RequestsPerTurn is < DeviceLimits.MinRequestsPerTurn or > DeviceLimits.MaxRequestsPerTurn)
            check.Error("requests-per-turn", $"{RequestsPerTurn}: choose {DeviceLimits.MinRequestsPerTurn}..{DeviceLimits.MaxRequestsPerTurn}");
        if (DescriptorsPerTurn is < DeviceLimits.MinDescriptorsPerTurn or > DeviceLimits.MaxDescriptorsPerTurn)
            check.Error("descriptors-per-turn", $"{DescriptorsPerTurn}: choose {DeviceLimits.MinDescriptorsPerTurn}..{DeviceLimits.MaxDescriptorsPerTurn}");
        if (MaxInFlight is < DeviceLimits.MinMaxInFlight or > DeviceLimits.MaxMaxInFlight)
            check.Error("max-in-flight", $"{MaxInFlight}: choose {DeviceLimits.MinMaxInFlight}..{DeviceLimits.MaxMaxInFlight}");
        if (ok && WindowSize is not null && MaxRegions is not null)
        {
            check.KeyError("window-size", "give either window-size or max-regions, not both");
            ok = false;
        }
        return ok;
    }

    [GeneratedRegex("^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    private static partial Regex NamePattern();
}
