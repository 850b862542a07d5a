using System.Text.RegularExpressions;
using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.Host.Plugins;

namespace Vism.Host.Config;

/// <summary>
/// Reads and validates a config file. Everything is checked before anything starts: TOML syntax,
/// unknown (misspelt) keys, types, sizes, device names, plugin kinds, each plugin's own option
/// validation, and endpoints claimed twice. All errors are collected, each with file, line,
/// column and key.
/// </summary>
public sealed partial class ConfigLoader
{
    /// <summary>Default <c>region-size</c>.</summary>
    public const ulong DefaultRegionSize = 1UL << 20;

    /// <summary>Default <c>window-size</c> (when neither it nor <c>max-regions</c> is given).</summary>
    public const ulong DefaultWindowSize = 64UL << 20;

    /// <summary>Default <c>notify-size</c> (one byte per region, as the proof of concept).</summary>
    public const ulong DefaultNotifySize = 1;

    /// <summary>The largest window (REGIONS + NOTIFY) a device may have.</summary>
    public const ulong MaxWindowSize = 64UL << 30;

    /// <summary>The largest <c>max-regions</c>.</summary>
    public const int MaxRegionsLimit = 65536;

    /// <summary>Highest virtio device ID whose modern PCI ID (0x1040 + id) fits 16 bits.</summary>
    public const uint MaxDeviceId = 0xFFFF - Virtio.PciDeviceIdBase;

    private const ulong PageSize = 4096;

    private readonly string _directory;

    private ConfigLoader(string file, ConfigErrors errors, TomlTable? root, HostSettings host)
    {
        File = file;
        Errors = errors;
        Root = root;
        Host = host;
        _directory = Path.GetDirectoryName(Path.GetFullPath(file)) ?? "/";
    }

    /// <summary>The file as named by the user.</summary>
    public string File { get; }

    /// <summary>Everything found wrong so far.</summary>
    public ConfigErrors Errors { get; }

    /// <summary>The parsed document; null when it is not valid TOML.</summary>
    public TomlTable? Root { get; }

    /// <summary>The host section (defaults where it had errors).</summary>
    public HostSettings Host { get; }

    /// <summary>Reads the file, parses the TOML and binds the <c>[host]</c> section (which names the plugin paths).</summary>
    public static ConfigLoader Parse(string file)
    {
        var errors = new ConfigErrors(file);
        string text;
        try
        {
            text = System.IO.File.ReadAllText(file);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            errors.Add(new TextPos(1, 1), "(file)", $"cannot read the config file: {ex.Message}");
            return new ConfigLoader(file, errors, null, new HostSettings());
        }
        TomlTable? root = TomlTree.Parse(text, file, errors);
        var loader = new ConfigLoader(file, errors, root, new HostSettings());
        return root is null ? loader : new ConfigLoader(file, errors, root, loader.BindHost(root));
    }

    /// <summary>Parses, loads plugins (program folder, <c>plugin-paths</c>, <paramref name="extraPluginPaths"/>)
    /// and validates everything.</summary>
    /// <exception cref="ConfigException">With every error, when the file is invalid.</exception>
    public static (VismConfig Config, PluginCatalog Plugins) Load(string file, IEnumerable<string> extraPluginPaths, ILogger log)
    {
        ConfigLoader loader = Parse(file);
        PluginCatalog catalog = PluginCatalog.Load(
            [PluginCatalog.DefaultDirectory, .. loader.Host.PluginPaths, .. extraPluginPaths], log);
        VismConfig? config = loader.BindDevices(catalog);
        if (config is null)
        {
            catalog.Dispose();
            throw new ConfigException(loader.Errors.Sorted().ToList());
        }
        return (config, catalog);
    }

    /// <summary>Binds and validates every <c>[[device]]</c> against the installed plugins.</summary>
    /// <returns>The config, or null when there are errors (see <see cref="Errors"/>).</returns>
    public VismConfig? BindDevices(PluginCatalog catalog)
    {
        if (Root is null) return null;
        var devices = new List<DeviceSettings>();
        var names = new Dictionary<string, string>(StringComparer.Ordinal);
        var endpoints = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (TomlEntry top in Root.Entries)
        {
            if (top.Key is "host") continue;
            if (top.Key is not "device")
            {
                Errors.Add(top.KeyPos, top.Key, OptionsSchema.UnknownKey(top.Key, ["host", "device"]));
                continue;
            }
            if (top.Value is not TomlArray { } array || array.Items.Any(i => i is not TomlTable))
            {
                Errors.Add(top.KeyPos, "device", "expected an array of tables: write each device as [[device]]");
                continue;
            }
            for (int i = 0; i < array.Items.Count; i++)
            {
                DeviceSettings? device = BindDevice((TomlTable)array.Items[i], $"device[{i}]", catalog, names, endpoints);
                if (device is not null) devices.Add(device);
            }
        }
        if (devices.Count == 0 && !Errors.Any)
            Errors.Add(new TextPos(1, 1), "device", "no [[device]] is configured: add at least one (see config/default.toml)");
        return Errors.Any ? null : new VismConfig(File, Host, devices);
    }

    private HostSettings BindHost(TomlTable root)
    {
        var host = new HostSettings();
        if (!root.TryGet("host", out TomlEntry? section)) return host;
        if (section.Value is not TomlTable table)
        {
            Errors.Add(section.KeyPos, "host", "expected a table: write it as [host]");
            return host;
        }
        foreach (TomlEntry e in table.Entries)
        {
            string key = "host." + e.Key;
            switch (e.Key)
            {
                case "gid":
                    if (e.Value is TomlScalar { Value: long g } && g >= 0) host = host with { Gid = (ulong)g };
                    else if (e.Value is TomlScalar { Value: string gs } && gs.StartsWith("0x", StringComparison.OrdinalIgnoreCase)
                             && ulong.TryParse(gs.AsSpan(2), System.Globalization.NumberStyles.AllowHexSpecifier, null, out ulong gx))
                        host = host with { Gid = gx };
                    else Errors.Add(e.Value.Pos, key, "expected a non-negative integer or a hex string such as \"0x1234abcd\" (64 bits)");
                    break;
                case "sharing":
                    if (Convert(e, key, typeof(Sharing)) is Sharing sharing) host = host with { Sharing = sharing };
                    break;
                case "state-dir":
                    if (Directory(e, key) is string state) host = host with { StateDirectory = state };
                    break;
                case "socket-dir":
                    if (Directory(e, key) is string sockets) host = host with { SocketDirectory = sockets };
                    break;
                case "plugin-paths":
                    if (Convert(e, key, typeof(string[])) is string[] paths)
                    {
                        var full = new List<string>();
                        for (int i = 0; i < paths.Length; i++)
                        {
                            string p = Path.GetFullPath(paths[i], _directory);
                            if (!System.IO.Directory.Exists(p))
                                Errors.Add(((TomlArray)e.Value).Items[i].Pos, $"{key}[{i}]", $"plugin directory {p} does not exist");
                            else full.Add(p);
                        }
                        host = host with { PluginPaths = full };
                    }
                    break;
                case "log-level":
                    if (Convert(e, key, typeof(LogLevel)) is LogLevel level) host = host with { LogLevel = level };
                    break;
                case "loops":
                    if (Convert(e, key, typeof(int)) is int loops)
                    {
                        if (loops is < 1 or > 256) Errors.Add(e.Value.Pos, key, $"{loops} loops: choose 1..256 (default 1: devices on one loop route notifies to each other inline)");
                        else host = host with { Loops = loops };
                    }
                    break;
                case "busy-poll":
                    if (Convert(e, key, typeof(TimeSpan)) is TimeSpan busy)
                    {
                        if (busy < TimeSpan.Zero || busy > TimeSpan.FromMilliseconds(10)) Errors.Add(e.Value.Pos, key, $"{TomlValues.FormatDuration(busy)}: choose 0s..10ms (default 0s: loops sleep as soon as they are idle)");
                        else host = host with { BusyPoll = busy };
                    }
                    break;
                default:
                    Errors.Add(e.KeyPos, key, OptionsSchema.UnknownKey(e.Key, HostKeys));
                    break;
            }
        }
        return host;
    }

    /// <summary>The keys of <c>[host]</c>.</summary>
    public static readonly string[] HostKeys = ["gid", "sharing", "state-dir", "socket-dir", "plugin-paths", "log-level", "loops", "busy-poll"];

    /// <summary>The keys of <c>[[device]]</c>.</summary>
    public static readonly string[] DeviceKeys = ["name", "device-id", "region-size", "window-size", "max-regions", "notify-size", "transport", "memory", "events"];

    private DeviceSettings? BindDevice(TomlTable table, string path, PluginCatalog catalog,
        Dictionary<string, string> names, Dictionary<string, string> endpoints)
    {
        int errorsBefore = Errors.Errors.Count;
        string? name = null;
        uint deviceId = Virtio.IsmDeviceId;
        ulong regionSize = DefaultRegionSize, notifySize = DefaultNotifySize;
        ulong? windowSize = null;
        int? maxRegions = null;
        TomlEntry? windowEntry = null;
        var sections = new Dictionary<PluginKind, TomlEntry>();

        foreach (TomlEntry e in table.Entries)
        {
            string key = $"{path}.{e.Key}";
            switch (e.Key)
            {
                case "name":
                    if (Convert(e, key, typeof(string)) is not string n) break;
                    if (!DeviceName().IsMatch(n))
                        Errors.Add(e.Value.Pos, key, $"'{n}' is not a device name: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (it becomes part of socket and file names)");
                    else if (names.TryGetValue(n, out string? first))
                        Errors.Add(e.Value.Pos, key, $"device name '{n}' is already used by {first}");
                    else
                    {
                        names.Add(n, $"{path} (line {e.Value.Pos.Line})");
                        name = n;
                    }
                    break;
                case "device-id":
                    if (Convert(e, key, typeof(long)) is long id)
                    {
                        if (id is < 1 or > MaxDeviceId) Errors.Add(e.Value.Pos, key, $"{id} is not a virtio device ID: choose 1..{MaxDeviceId} (ISM is {Virtio.IsmDeviceId})");
                        else deviceId = (uint)id;
                    }
                    break;
                case "region-size":
                    if (Size(e, key) is ulong rs)
                    {
                        if (rs < PageSize || !ulong.IsPow2(rs))
                            Errors.Add(e.Value.Pos, key, $"{Sizes.Format(rs)} is not a valid region size: it must be a power of two of at least 4KiB");
                        else regionSize = rs;
                    }
                    break;
                case "window-size":
                    windowEntry = e;
                    if (Size(e, key) is ulong ws)
                    {
                        if (!ulong.IsPow2(ws)) Errors.Add(e.Value.Pos, key, $"{Sizes.Format(ws)} is not a power of two (the window is one PCI BAR)");
                        else if (ws > MaxWindowSize) Errors.Add(e.Value.Pos, key, $"{Sizes.Format(ws)} is too large: at most {Sizes.Format(MaxWindowSize)}");
                        else windowSize = ws;
                    }
                    break;
                case "max-regions":
                    if (Convert(e, key, typeof(int)) is int mr)
                    {
                        if (mr is < 1 or > MaxRegionsLimit) Errors.Add(e.Value.Pos, key, $"{mr} regions: choose 1..{MaxRegionsLimit}");
                        else maxRegions = mr;
                    }
                    break;
                case "notify-size":
                    if (Size(e, key) is ulong ns)
                    {
                        if (ns is 0 or > PageSize || !ulong.IsPow2(ns)) Errors.Add(e.Value.Pos, key, $"{ns} bytes: notify-size must be a power of two from 1 to 4096");
                        else notifySize = ns;
                    }
                    break;
                case "transport":
                    sections[PluginKind.Transport] = e;
                    break;
                case "memory":
                    sections[PluginKind.Memory] = e;
                    break;
                case "events":
                    sections[PluginKind.Events] = e;
                    break;
                default:
                    Errors.Add(e.KeyPos, key, OptionsSchema.UnknownKey(e.Key, DeviceKeys));
                    break;
            }
        }
        if (name is null && !table.TryGet("name", out _))
            Errors.Add(table.Pos, $"{path}.name", "every device needs a name (name = \"ism0\")");
        if (windowSize is not null && maxRegions is not null)
            Errors.Add(windowEntry!.KeyPos, $"{path}.window-size", "give either window-size or max-regions, not both");

        DeviceDescription? description = null;
        if (Errors.Errors.Count == errorsBefore)
        {
            description = Layout(name!, deviceId, regionSize, windowSize, maxRegions, notifySize, out string? layoutError);
            if (description is null)
            {
                TomlEntry? at = windowEntry ?? (table.TryGet("max-regions", out TomlEntry? m) ? m : null) ?? (table.TryGet("region-size", out TomlEntry? r) ? r : null);
                Errors.Add(at?.KeyPos ?? table.Pos, $"{path}.{at?.Key ?? "window-size"}", layoutError!);
            }
        }

        var hostDescription = new HostDescription { Gid = Host.Gid ?? 0, StateDirectory = Host.StateDirectory, SocketDirectory = Host.SocketDirectory };
        var claimed = new List<string>();
        PluginChoice? Choose(PluginKind kind, bool required)
        {
            string sectionPath = $"{path}.{PluginCatalog.Describe(kind)}";
            if (!sections.TryGetValue(kind, out TomlEntry? entry))
            {
                if (required)
                    Errors.Add(table.Pos, sectionPath, $"missing [{sectionPath.Replace($"{path}.", "device.")}] with a kind (installed: {Installed(catalog, kind)})");
                return null;
            }
            if (entry.Value is not TomlTable section)
            {
                Errors.Add(entry.KeyPos, sectionPath, $"expected a table: write it as [device.{entry.Key}] with kind = \"...\"");
                return null;
            }
            if (!section.TryGet("kind", out TomlEntry? kindEntry))
            {
                Errors.Add(section.Pos, $"{sectionPath}.kind", $"missing kind (installed: {Installed(catalog, kind)})");
                return null;
            }
            if (Convert(kindEntry, $"{sectionPath}.kind", typeof(string)) is not string kindName) return null;
            if (!catalog.TryGet(kind, kindName, out PluginRegistration? registration))
            {
                Errors.Add(kindEntry.Value.Pos, $"{sectionPath}.kind", $"no {PluginCatalog.Describe(kind)} plugin '{kindName}' is installed (installed: {Installed(catalog, kind)})");
                return null;
            }
            object options = registration.Options.Bind(section, sectionPath, PluginCatalog.ReservedKeys, Errors);
            if (description is not null && options is IValidatableOptions validatable)
            {
                var context = new ValidationContext(this, description, hostDescription, table, path, section, sectionPath, endpoints, claimed, name!);
                try
                {
                    validatable.Validate(context);
                }
                catch (Exception ex)
                {
                    Errors.Add(section.Pos, sectionPath, $"plugin {registration.Plugin.Name} failed while validating its options: {PluginCatalog.Explain(ex)}");
                }
            }
            return new PluginChoice(registration, options, sectionPath);
        }

        PluginChoice? transport = Choose(PluginKind.Transport, required: true);
        PluginChoice? memory = Choose(PluginKind.Memory, required: true);
        PluginChoice? events = Choose(PluginKind.Events, required: false);
        if (Errors.Errors.Count != errorsBefore) return null;
        return new DeviceSettings
        {
            Name = name!,
            Description = description!,
            Transport = transport!,
            Memory = memory!,
            Events = events,
            Endpoints = claimed,
        };
    }

    /// <summary>Computes the REGIONS + NOTIFY layout (Core's rule: back to back, the total a power of two).
    /// With <paramref name="maxRegions"/> the window is the smallest that holds at least that many regions.</summary>
    internal static DeviceDescription? Layout(string name, uint deviceId, ulong regionSize, ulong? windowSize, int? maxRegions,
        ulong notifySize, out string? error)
    {
        error = null;
        if (maxRegions is int wanted)
        {
            for (ulong window = regionSize * 2; window <= MaxWindowSize && window != 0; window *= 2)
            {
                DeviceDescription? d = TryCompute(name, deviceId, window, regionSize, notifySize, out error);
                if (d is not null && d.MaxRegions >= wanted) return d;
            }
            error = $"{wanted} regions of {Sizes.Format(regionSize)} do not fit in a window of at most {Sizes.Format(MaxWindowSize)}";
            return null;
        }
        ulong size = windowSize ?? DefaultWindowSize;
        if (size <= regionSize)
        {
            error = $"a {Sizes.Format(size)} window has no room for one {Sizes.Format(regionSize)} region plus its notify page: use a window of at least {Sizes.Format(regionSize * 2)}";
            return null;
        }
        return TryCompute(name, deviceId, size, regionSize, notifySize, out error);
    }

    private static DeviceDescription? TryCompute(string name, uint deviceId, ulong window, ulong regionSize, ulong notifySize, out string? error)
    {
        error = null;
        try
        {
            return Vism.Core.DeviceLayout.Compute(name, deviceId, window, regionSize, notifySize);
        }
        catch (ArgumentException ex)
        {
            error = ex.Message;
            return null;
        }
    }

    private static string Installed(PluginCatalog catalog, PluginKind kind)
    {
        IReadOnlyList<string> names = catalog.Names(kind);
        return names.Count == 0 ? "none" : string.Join(", ", names);
    }

    private object? Convert(TomlEntry e, string key, Type type)
    {
        if (TomlValues.TryConvert(e.Value, type, out object? value, out string? error)) return value;
        Errors.Add(e.Value.Pos, key, error!);
        return null;
    }

    private ulong? Size(TomlEntry e, string key)
    {
        if (TomlValues.TryGetSize(e.Value, out ulong size, out string? error)) return size;
        Errors.Add(e.Value.Pos, key, error!);
        return null;
    }

    private string? Directory(TomlEntry e, string key)
    {
        if (Convert(e, key, typeof(string)) is not string dir) return null;
        if (dir.Length == 0)
        {
            Errors.Add(e.Value.Pos, key, "expected a directory path, found an empty string");
            return null;
        }
        return Path.GetFullPath(dir, _directory);
    }

    [GeneratedRegex("^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    private static partial Regex DeviceName();

    /// <summary>What a plugin's <see cref="IValidatableOptions.Validate"/> reports into.</summary>
    private sealed class ValidationContext(ConfigLoader loader, DeviceDescription device, HostDescription host,
        TomlTable deviceTable, string devicePath, TomlTable section, string sectionPath,
        Dictionary<string, string> endpoints, List<string> claimed, string deviceName) : OptionsValidationContext
    {
        public override DeviceDescription Device => device;

        public override HostDescription Host => host;

        public override void Error(string key, string message) =>
            loader.Errors.Add(section.TryGet(key, out TomlEntry? e) ? e.KeyPos : section.Pos, $"{sectionPath}.{key}", message);

        public override void DeviceError(string key, string message) =>
            loader.Errors.Add(deviceTable.TryGet(key, out TomlEntry? e) ? e.KeyPos : deviceTable.Pos, $"{devicePath}.{key}", message);

        public override void ClaimEndpoint(string key, string endpoint)
        {
            string normal = endpoint.StartsWith('/') ? Path.GetFullPath(endpoint) : endpoint;
            string here = $"{sectionPath}.{key}";
            if (endpoints.TryGetValue(normal, out string? owner))
                Error(key, $"{normal} is already used by {owner}");
            else
            {
                endpoints.Add(normal, $"{here} of device '{deviceName}'");
                claimed.Add(normal);
            }
        }
    }
}
