using System.Text.RegularExpressions;
using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.Core;
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
        var positions = new Dictionary<string, TextPos>(StringComparer.Ordinal);
        if (Root.TryGet("host", out TomlEntry? host) && host.Value is TomlTable hostTable)
            foreach (TomlEntry e in hostTable.Entries) positions[$"host.{e.Key}"] = e.Value.Pos;
        return Errors.Any ? null : new VismConfig(File, Host, devices) 
        {
            Positions = positions,
            Warnings = [.. Errors.Warnings.OrderBy(w => w.Pos.Line).ThenBy(w => w.Pos.Column)],
        };
    }

    private HostSettings BindHost(TomlTable root)
    {
        if (!root.TryGet("host", out TomlEntry? section)) return new HostSettings();
        if (section.Value is not TomlTable table)
        {
            Errors.Add(section.KeyPos, "host", "expected a table: write it as [host]");
            return new HostSettings();
        }
        (HostSettings host, SectionCheck check) = SectionCheck.Bind<HostSettings>(HostSettings.Schema, table, "host", new HashSet<string>(), Errors, _directory);
        return host.Checked(check);
    }

    private DeviceSettings? BindDevice(TomlTable table, string path, PluginCatalog catalog,
        Dictionary<string, string> names, Dictionary<string, string> endpoints)
    {
        int errorsBefore = Errors.Errors.Count;
        (DeviceSection keys, SectionCheck check) = SectionCheck.Bind<DeviceSection>(DeviceSection.Schema, table, path, DeviceSection.PluginSections, Errors, _directory);
        keys.Check(check);
        string? name = check.Given("name") && !Errors.Errors.Skip(errorsBefore).Any(e => e.Key == $"{path}.name") ? keys.Name : null;
        if (name is not null && table.TryGet("name", out TomlEntry? nameEntry))
        {
            if (names.TryGetValue(name, out string? first))
            {
                Errors.Add(nameEntry.Value.Pos, $"{path}.name", $"device name '{name}' is already used by {first}");
                name = null;
            }
            else names.Add(name, $"{path} (line {nameEntry.Value.Pos.Line})");
        }
        var sections = new Dictionary<PluginKind, TomlEntry>();
        foreach ((string key, PluginKind kind) in new[] { ("transport", PluginKind.Transport), ("memory", PluginKind.Memory), ("events", PluginKind.Events) })
            if (table.TryGet(key, out TomlEntry? e)) sections[kind] = e;

        if (name is null && !table.TryGet("name", out _))
            Errors.Add(table.Pos, $"{path}.name", "every device needs a name (name = \"ism0\")");

        DeviceDescription? description = null;
        if (Errors.Errors.Count == errorsBefore)
        {
            description = Layout(name!, (uint)keys.DeviceId, keys.RegionSize, keys.WindowSize, keys.MaxRegions, keys.NotifySize, out string? layoutError);
            if (description is null)
            {
                TomlEntry? at = (table.TryGet("window-size", out TomlEntry? w) ? w : null) ?? (table.TryGet("max-regions", out TomlEntry? m) ? m : null) ?? (table.TryGet("region-size", out TomlEntry? r) ? r : null);
                Errors.Add(at?.KeyPos ?? table.Pos, $"{path}.{at?.Key ?? "window-size"}", layoutError!);
            }
        }

        HostDescription hostDescription = Host.Describe(Host.Gid ?? 0);
        var claimed = new List<string>();
        PluginChoice? transport = null;
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
                var context = new ValidationContext(this, description, hostDescription, table, path, section, sectionPath, endpoints, claimed, name!)
                {
                    Transport = kind == PluginKind.Events ? transport?.Options : null,
                };
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

        transport = Choose(PluginKind.Transport, required: true);
        PluginChoice? memory = Choose(PluginKind.Memory, required: true);
        PluginChoice? events = Choose(PluginKind.Events, required: false);
        if (Errors.Errors.Count != errorsBefore) return null;
        return new DeviceSettings
        {
            Name = name!,
            Keys = keys,
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
        ulong least = 2 * Math.Max(regionSize, Vism.Core.DeviceLayout.WindowAlignment);
        if (size < least)
        {
            error = $"a {Sizes.Format(size)} window has no room for a REGIONS and a NOTIFY window of {Sizes.Format(least / 2)} each (both start and end on 2MiB boundaries): use a window of at least {Sizes.Format(least)}";
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


    /// <summary>What a plugin's <see cref="IValidatableOptions.Validate"/> reports into.</summary>
    private sealed class ValidationContext(ConfigLoader loader, DeviceDescription device, HostDescription host,
        TomlTable deviceTable, string devicePath, TomlTable section, string sectionPath,
        Dictionary<string, string> endpoints, List<string> claimed, string deviceName) : OptionsValidationContext
    {
        public override DeviceDescription Device => device;

        public override HostDescription Host => host;

        public object? Transport { get; init; }

        public override object? TransportOptions => Transport;

        public override void Error(string key, string message) =>
            loader.Errors.Add(section.TryGet(key, out TomlEntry? e) ? e.KeyPos : section.Pos, $"{sectionPath}.{key}", message);

        public override void Warning(string key, string message) =>
            loader.Errors.Warn(section.TryGet(key, out TomlEntry? e) ? e.KeyPos : section.Pos, $"{sectionPath}.{key}", message);

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
