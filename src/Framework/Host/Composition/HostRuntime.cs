using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.Core;
using Vism.Host.Commands;
using Vism.Host.Config;
using Vism.Host.Plugins;
using Vism.Host.Status;
using Vism.Native;

namespace Vism.Host.Composition;

/// <summary>The host could not start: a device could not be composed or started (the message names
/// the device and the plugin at fault), or the host itself could not (<see cref="Device"/> is null).</summary>
public sealed class DeviceStartException(string? device, string message, Exception? inner = null)
    : Exception(device is null ? message : $"device {device}: {message}", inner)
{
    /// <summary>The device's name; null when the failure is not a device's.</summary>
    public string? Device { get; } = device;
}

/// <summary>One composed, started device and everything it owns.</summary>
public sealed class RunningDevice
{
    internal RunningDevice(DeviceSettings settings, EventLoop loop, DeviceCounters counters, IServiceScope scope)
    {
        Settings = settings;
        Loop = loop;
        Counters = counters;
        Scope = scope;
    }

    public DeviceSettings Settings { get; }
    public EventLoop Loop { get; }
    public DeviceCounters Counters { get; }
    internal IServiceScope Scope { get; }
    public IMemoryBackend? Memory { get; internal set; }
    public IEventChannel? Events { get; internal set; }
    public ITransport? Transport { get; internal set; }
    public IsmDevice? Device { get; internal set; }

    /// <summary>The transport's endpoint (socket path), once it exists.</summary>
    public string Endpoint => Transport?.Endpoint ?? "";
}

/// <summary>
/// A running host: the <see cref="IsmHost"/> registry, the loop pool and one DI scope per device
/// holding its options, description, loop and counters. Plugin instances are created with
/// <see cref="ActivatorUtilities"/> on the device's loop; then the device is registered and its
/// transport started. Disposing stops every transport (sockets removed), removes every device
/// (regions released) and disposes memory and event plugins, loops and the status socket.
/// </summary>
public sealed class HostRuntime : IAsyncDisposable
{
    private readonly ILogger _log;
    private readonly LoopPool _loops;
    private readonly ServiceProvider _services;
    private readonly List<RunningDevice> _devices = [];
    private readonly Lock _devicesLock = new();
    private readonly DateTimeOffset _started = DateTimeOffset.UtcNow;
    private readonly SemaphoreSlim _reconfiguring = new(1, 1);
    private readonly HashSet<string> _inherited;
    private StatusSocket? _status;
    private bool _disposed;

    private HostRuntime(VismConfig config, IsmHost ism, LoopPool loops, ServiceProvider services, HostDescription host, ILoggerFactory logs,
        IEnumerable<string> inherited)
    {
        _inherited = new HashSet<string>(inherited, StringComparer.Ordinal);
        Config = config;
        Ism = ism;
        _loops = loops;
        _services = services;
        Host = host;
        _log = logs.CreateLogger("Vism.Host");
    }

    /// <summary>The config now applied (a reload replaces it).</summary>
    public VismConfig Config { get; private set; }

    /// <summary>Called for a <c>reload</c> request on the status socket (set by <c>vism run</c>); null refuses it.</summary>
    public Func<Task<ReloadResult>>? ReloadHandler { get; set; }

    public IsmHost Ism { get; }

    public HostDescription Host { get; }

    /// <summary>The devices started so far, in config order.</summary>
    public IReadOnlyList<RunningDevice> Devices
    {
        get { lock (_devicesLock) return [.. _devices]; }
    }

    /// <summary>Composes and starts every device of <paramref name="config"/>, then serves status.</summary>
    /// <param name="config">The validated config.</param>
    /// <param name="logs">Logging.</param>
    /// <param name="serveStatus">Whether to serve the status socket.</param>
    /// <param name="optionTypes">Every plugin options type a later reload may bring (the catalog's); the config's own are always included.</param>
    /// <param name="inherited">Socket paths inherited from the service manager: their files are never removed.</param>
    /// <exception cref="DeviceStartException">A device could not start; everything started is stopped again.</exception>
    public static async Task<HostRuntime> StartAsync(VismConfig config, ILoggerFactory logs, bool serveStatus = true,
        IEnumerable<Type>? optionTypes = null, IEnumerable<string>? inherited = null)
    {
        var ism = new IsmHost(new IsmHostOptions
        {
            Gid = config.Host.Gid,
            Sharing = config.Host.Sharing == Sharing.Multi ? SharingMode.Multi : SharingMode.Pair,
            StateDirectory = config.Host.StateDirectory,
        }, logs);
        HostDescription host = config.Host.Describe(ism.Gid);
        var loops = new LoopPool(Math.Min(config.Host.Loops, Math.Max(1, config.Devices.Count)), logs, config.Host.BusyPoll);
        var runtime = new HostRuntime(config, ism, loops, BuildServices(config, optionTypes ?? [], host, logs), host, logs, inherited ?? []);
        string? starting = null;
        try
        {
            CreateDirectory(config, "socket-dir", config.Host.SocketDirectory);
            CreateDirectory(config, "state-dir", config.Host.StateDirectory);
            if (serveStatus)
                runtime._status = StatusSocket.Start(config.Host.StateDirectory, runtime.HandleAsync, logs.CreateLogger<StatusSocket>());
            foreach (DeviceSettings device in config.Devices)
            {
                starting = device.Name;
                await runtime.StartDeviceAsync(device).ConfigureAwait(false);
            }
        }
        catch (Exception ex)
        {
            await runtime.DisposeAsync().ConfigureAwait(false);
            if (ex is DeviceStartException) throw;
            throw new DeviceStartException(starting, ex.Message, ex);
        }
        runtime._log.LogInformation("vism {Version}: gid {Gid:x16}, sharing {Sharing}, {Devices} device(s) on {Loops} loop(s); status: {Status}",
            Cli.Version, ism.Gid, config.Host.Sharing.ToString().ToLowerInvariant(), config.Devices.Count, loops.Loops.Count,
            runtime._status?.Path ?? "(none)");
        return runtime;
    }

    /// <summary>Creates a [host] directory, or explains which key, where, why, and what to do.</summary>
    private static void CreateDirectory(VismConfig config, string key, string path)
    {
        try
        {
            Directory.CreateDirectory(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new DeviceStartException(null, $"{config.Where($"host.{key}")}: cannot create the directory {path}: {Paths.WhyNotCreatable(path, ex)}", ex);
        }
    }

    /// <summary>Answers one status-socket request: <c>status</c> (the JSON report) or <c>reload</c>.</summary>
    private async Task<string> HandleAsync(string request)
    {
        switch (request)
        {
            case "" or "status":
                return StatusJson();
            case "reload":
                ReloadResult result = ReloadHandler is { } reload
                    ? await reload().ConfigureAwait(false)
                    : ReloadResult.Refused(["this host does not reload (it was not started by vism run)"]);
                return JsonSerializer.Serialize(result, StatusReport.Json);
            default:
                return JsonSerializer.Serialize(new { Error = $"unknown request '{request}' (known: status, reload)" }, StatusReport.Json);
        }
    }

    /// <summary>
    /// Applies a new validated config: devices only in the new one start, devices only in the old
    /// one stop (their sockets removed, their regions released), devices whose settings changed are
    /// restarted, and every other device keeps running untouched (its connection, regions and
    /// tokens). A change in <c>[host]</c> other than log-level/log-format (which apply from the next
    /// start) cannot be applied to a running host: the reload is refused and nothing changes. One
    /// reload at a time.
    /// </summary>
    public async Task<ReloadResult> ApplyAsync(VismConfig next)
    {
        ArgumentNullException.ThrowIfNull(next);
        await _reconfiguring.WaitAsync().ConfigureAwait(false);
        try
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            List<string> hostChanges = ConfigDiff.HostChanges(Config.Host, next.Host);
            if (hostChanges.Count > 0) return ReloadResult.Refused(hostChanges);
            Dictionary<string, RunningDevice> running = Devices.ToDictionary(d => d.Settings.Name, StringComparer.Ordinal);
            var wanted = next.Devices.ToDictionary(d => d.Name, StringComparer.Ordinal);
            var removed = running.Keys.Where(n => !wanted.ContainsKey(n)).ToList();
            var changed = running.Keys.Where(n => wanted.TryGetValue(n, out DeviceSettings? w) && !ConfigDiff.Same(running[n].Settings, w)).ToList();
            var kept = running.Keys.Where(n => wanted.ContainsKey(n) && !changed.Contains(n)).ToList();
            var added = wanted.Keys.Where(n => !running.ContainsKey(n)).ToList();
            foreach (string name in removed.Concat(changed))
                await StopDeviceAsync(running[name], forget: true).ConfigureAwait(false);
            var failed = new List<string>();
            foreach (DeviceSettings device in next.Devices.Where(d => added.Contains(d.Name) || changed.Contains(d.Name)))
            {
                try
                {
                    await StartDeviceAsync(device).ConfigureAwait(false);
                }
                catch (DeviceStartException ex)
                {
                    _log.LogError("reload: {Reason}; the device stays stopped", ex.Message);
                    failed.Add(ex.Message);
                    if (Devices.FirstOrDefault(d => d.Settings == device) is RunningDevice partial)
                        await StopDeviceAsync(partial, forget: true).ConfigureAwait(false);
                }
            }
            // Devices that kept running keep their settings objects; the rest come from the new file.
            Config = next with { Devices = next.Devices.Select(d => kept.Contains(d.Name) ? running[d.Name].Settings : d).ToList() };
            lock (_devicesLock)
            {
                List<string> order = next.Devices.Select(d => d.Name).ToList();
                _devices.Sort((a, b) => order.IndexOf(a.Settings.Name).CompareTo(order.IndexOf(b.Settings.Name)));
            }
            return new ReloadResult
            {
                Ok = failed.Count == 0,
                Added = added,
                Removed = removed,
                Restarted = changed,
                Kept = kept,
                Errors = failed,
            };
        }
        finally
        {
            _reconfiguring.Release();
        }
    }

    /// <summary>The DI root: shared services, and per-device (scoped) options, description, loop and counters.</summary>
    private static ServiceProvider BuildServices(VismConfig config, IEnumerable<Type> optionTypes, HostDescription host, ILoggerFactory logs)
    {
        var services = new ServiceCollection();
        services.AddSingleton(logs);
        services.AddSingleton(typeof(ILogger<>), typeof(Logger<>));
        services.AddSingleton(host);
        services.AddScoped<DeviceContext>();
        services.AddScoped(sp => sp.GetRequiredService<DeviceContext>().Description);
        services.AddScoped<IDeviceLoop>(sp => sp.GetRequiredService<DeviceContext>().Loop);
        services.AddScoped<IDeviceCounters>(sp => sp.GetRequiredService<DeviceContext>().Counters);
        foreach (Type optionsType in config.Devices
                     .SelectMany(d => new[] { d.Transport, d.Memory, d.Events })
                     .OfType<PluginChoice>()
                     .Select(c => c.Options.GetType())
                     .Concat(optionTypes)
                     .Distinct())
            services.AddScoped(optionsType, sp => sp.GetRequiredService<DeviceContext>().OptionsOf(optionsType));
        return services.BuildServiceProvider(new ServiceProviderOptions { ValidateScopes = true });
    }

    private async Task StartDeviceAsync(DeviceSettings settings)
    {
        EventLoop loop = _loops.Next();
        var counters = new DeviceCounters();
        IServiceScope scope = _services.CreateScope();
        var running = new RunningDevice(settings, loop, counters, scope);
        lock (_devicesLock) _devices.Add(running);
        scope.ServiceProvider.GetRequiredService<DeviceContext>().Set(settings, loop, counters);
        string name = settings.Name;

        running.Memory = await Create<IMemoryBackend>(running, settings.Memory).ConfigureAwait(false);
        ulong page = await loop.InvokeAsync(() => running.Memory.PageSize).ConfigureAwait(false);
        if (page == 0 || settings.Description.RegionSize % page != 0)
            throw new DeviceStartException(name, $"region-size {Sizes.Format(settings.Description.RegionSize)} is not a multiple of the {settings.Memory.Registration.Name} memory's page size {Sizes.Format(page)}");
        if (settings.Events is not null)
            running.Events = await Create<IEventChannel>(running, settings.Events).ConfigureAwait(false);
        running.Transport = await Create<ITransport>(running, settings.Transport).ConfigureAwait(false);

        try
        {
            running.Device = Ism.AddDevice(settings.Description, loop, running.Memory, running.Events, counters, settings.Limits);
        }
        catch (Exception ex)
        {
            throw new DeviceStartException(name, $"cannot be registered: {ex.Message}", ex);
        }
        IsmDevice device = running.Device;
        try
        {
            await loop.InvokeAsync(() => running.Transport.Start(device)).ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            throw new DeviceStartException(name, $"transport {settings.Transport.Registration.Name} (plugin {settings.Transport.Registration.Plugin.Name}) cannot start: {PluginCatalog.Explain(ex)}", ex);
        }
        _log.LogInformation("device {Name}: devid {DevId}, transport {Transport} at {Endpoint}, memory {Memory}, events {Events}, {Regions} regions of {RegionSize}",
            name, device.DevId, settings.Transport.Registration.Name, running.Endpoint, settings.Memory.Registration.Name,
            settings.Events?.Registration.Name ?? "none", settings.Description.MaxRegions, Sizes.Format(settings.Description.RegionSize));
    }

    /// <summary>Creates a plugin instance in the device's scope, on the device's loop.</summary>
    private async Task<T> Create<T>(RunningDevice running, PluginChoice choice) where T : class
    {
        PluginRegistration r = choice.Registration;
        try
        {
            return await running.Loop.InvokeAsync(() =>
                (T)ActivatorUtilities.CreateInstance(running.Scope.ServiceProvider, r.Implementation)).ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            throw new DeviceStartException(running.Settings.Name,
                $"{PluginCatalog.Describe(r.Kind)} {r.Name} (plugin {r.Plugin.Name}) cannot be created: {PluginCatalog.Explain(ex)}", ex);
        }
    }

    /// <summary>The status report as JSON (what the status socket serves).</summary>
    public string StatusJson() => JsonSerializer.Serialize(Report(), StatusReport.Json);

    /// <summary>The status report: registry snapshot plus what the host knows about each device.</summary>
    public StatusReport Report()
    {
        HostSnapshot snapshot = Ism.Snapshot();
        Dictionary<string, RunningDevice> byName = Devices.ToDictionary(d => d.Settings.Name, StringComparer.Ordinal);
        return new StatusReport
        {
            Version = Cli.Version,
            Pid = Environment.ProcessId,
            Config = Path.GetFullPath(Config.File),
            Started = _started,
            Gid = $"0x{snapshot.Gid:x16}",
            Sharing = snapshot.Sharing.ToString().ToLowerInvariant(),
            Devices = snapshot.Devices.Select(d =>
            {
                byName.TryGetValue(d.Name, out RunningDevice? r);
                return new DeviceReport
                {
                    Name = d.Name,
                    DevId = d.DevId,
                    Endpoint = r?.Endpoint ?? "",
                    Transport = r?.Settings.Transport.Registration.Name ?? "",
                    Memory = r?.Settings.Memory.Registration.Name ?? "",
                    Events = r?.Settings.Events?.Registration.Name,
                    Status = d.Status.ToString(),
                    Connected = d.Connected,
                    RegionsInUse = d.RegionsInUse,
                    MaxRegions = d.MaxRegions,
                    MemoryCapacity = d.Memory.Capacity,
                    MemoryUsed = d.Memory.Used,
                    MemoryHighWater = d.Memory.HighWater,
                    Counters = d.Counters,
                };
            }).ToList(),
            Regions = snapshot.Regions.Select(g => new RegionReport
            {
                TokenHint = g.TokenHint,
                Size = g.Size,
                Length = g.Length,
                OwnerDevId = g.OwnerDevId,
                HomeDevId = g.HomeDevId,
                Recovered = g.Recovered,
                References = g.References.Select(x => new RegionReferenceReport(x.DevId, x.Offset)).ToList(),
            }).ToList(),
        };
    }

    /// <summary>Stops everything in reverse order of start; never throws (failures are logged).</summary>
    public async ValueTask DisposeAsync()
    {
        if (_disposed) return;
        _disposed = true;
        // Regions dropped from here on are closed, not released: persisted ones survive the stop.
        Ism.BeginShutdown();
        if (_status is not null)
            await Quietly("status socket", async () => await _status.DisposeAsync().ConfigureAwait(false)).ConfigureAwait(false);
        IReadOnlyList<RunningDevice> devices = Devices;
        for (int i = devices.Count - 1; i >= 0; i--)
            await StopDeviceAsync(devices[i], forget: false).ConfigureAwait(false);
        await Quietly("registry", () => { Ism.Dispose(); return Task.CompletedTask; }).ConfigureAwait(false);
        await Quietly("loops", () => { _loops.Dispose(); return Task.CompletedTask; }).ConfigureAwait(false);
        // Scopes go after the loops: a scope disposes the loop it handed out (a factory registration),
        // and a loop is shared by several devices when there are more devices than loops.
        foreach (RunningDevice d in devices)
            await Quietly($"device {d.Settings.Name}: disposing its scope", () => { d.Scope.Dispose(); return Task.CompletedTask; }).ConfigureAwait(false);
        await _services.DisposeAsync().ConfigureAwait(false);
        _reconfiguring.Dispose();
    }

    /// <summary>Stops one device: its transport (socket removed), its registration (regions released),
    /// its event channel and memory. Never throws (failures are logged). With <paramref name="forget"/>
    /// (a reload) the device leaves the running set; its scope is dropped, not disposed: the only
    /// disposable the scope tracks is the loop it handed out, which other devices share.</summary>
    private async Task StopDeviceAsync(RunningDevice d, bool forget)
    {
        string name = d.Settings.Name;
        if (d.Transport is ITransport transport)
            await Quietly($"device {name}: stopping transport", () => d.Loop.InvokeAsync(async () => { await transport.DisposeAsync().ConfigureAwait(true); return true; })).ConfigureAwait(false);
        foreach (string endpoint in d.Settings.Endpoints)
            if (!_inherited.Contains(endpoint)) RemoveLeftoverSocket(name, endpoint);
        if (d.Device is IsmDevice device)
            await Quietly($"device {name}: removing", () => { Ism.RemoveDevice(device); return Task.CompletedTask; }).ConfigureAwait(false);
        if (d.Events is IEventChannel events)
            await Quietly($"device {name}: disposing events", () => d.Loop.InvokeAsync(events.Dispose)).ConfigureAwait(false);
        if (d.Memory is IMemoryBackend memory)
            await Quietly($"device {name}: disposing memory", () => d.Loop.InvokeAsync(memory.Dispose)).ConfigureAwait(false);
        if (forget)
            lock (_devicesLock) _devices.Remove(d);
        _log.LogInformation("device {Name}: stopped", name);
    }

    /// <summary>A transport must remove its socket when it stops; if one is left, remove it and say so.</summary>
    private void RemoveLeftoverSocket(string device, string endpoint)
    {
        if (!endpoint.StartsWith('/') || Mono.Unix.Native.Syscall.lstat(endpoint, out Mono.Unix.Native.Stat st) != 0) return;
        if ((st.st_mode & Mono.Unix.Native.FilePermissions.S_IFMT) != Mono.Unix.Native.FilePermissions.S_IFSOCK) return;
        _log.LogWarning("device {Name}: its transport left the socket {Endpoint} behind; removing it", device, endpoint);
        try { File.Delete(endpoint); } catch (IOException ex) { _log.LogWarning("cannot remove {Endpoint}: {Error}", endpoint, ex.Message); }
    }

    private async Task Quietly(string what, Func<Task> action)
    {
        try
        {
            await action().ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            _log.LogError(ex, "{What} failed", what);
        }
    }

    /// <summary>The per-device values the scope hands to plugin constructors.</summary>
    private sealed class DeviceContext
    {
        private DeviceSettings? _settings;
        private EventLoop? _loop;
        private DeviceCounters? _counters;

        public void Set(DeviceSettings settings, EventLoop loop, DeviceCounters counters)
        {
            _settings = settings;
            _loop = loop;
            _counters = counters;
        }

        private DeviceSettings Settings => _settings ?? throw new InvalidOperationException("device scope used before it was set up");

        public DeviceDescription Description => Settings.Description;

        public IDeviceLoop Loop => _loop!;

        public IDeviceCounters Counters => _counters!;

        public object OptionsOf(Type type)
        {
            PluginChoice[] matching = new[] { Settings.Transport, Settings.Memory, Settings.Events }
                .OfType<PluginChoice>().Where(c => c.Options.GetType() == type).ToArray();
            return matching.Length switch
            {
                1 => matching[0].Options,
                0 => throw new InvalidOperationException($"device {Settings.Name} has no options of type {type.Name}"),
                _ => throw new InvalidOperationException($"device {Settings.Name} has two plugin sections with options of type {type.Name}; the plugins must use distinct options types"),
            };
        }
    }
}
