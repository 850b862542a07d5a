using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.Core;
using Vism.Driver;
using Vism.Native;

namespace Vism.Conformance.Composition;

/// <summary>
/// A composer for tests: plugins are given as objects (no folders, no TOML), and each device's plugin
/// instances are created as the host creates them: options objects made with their parameterless
/// constructor, adjusted by <see cref="Configure{TOptions}"/>, validated through
/// <see cref="IValidatableOptions"/>; implementations built by dependency injection with the
/// options, <see cref="DeviceDescription"/>, <see cref="HostDescription"/>, the device's
/// <see cref="IDeviceLoop"/>, <see cref="IDeviceCounters"/>, <c>ILogger&lt;T&gt;</c> and
/// <see cref="ILoggerFactory"/> available, on the device's loop; devices registered with an
/// <see cref="IsmHost"/>; transports started on their loops. It also offers the in-process
/// <c>in-memory</c> transport, which needs no sockets.
/// </summary>
/// <example>
/// A plugin author's xunit test:
/// <code>
/// var composer = new DirectComposer(logs, new MyTransportPlugin(), new FileMemoryPlugin(), new VqEventsPlugin());
/// MatrixReport report = await new ConformanceRunner(composer, logs).RunAsync(
///     [new Combination("my-transport", "file", "vq")], ConformanceSuite.All);
/// Assert.False(report.AnyFailed, report.FailureSummary());
/// </code>
/// </example>
public sealed class DirectComposer : IComposer
{
    private readonly ILoggerFactory _logs;
    private readonly Dictionary<(PluginKind, string), Registration> _kinds = [];
    private readonly List<(Type Type, Action<object> Apply)> _configure = [];

    /// <summary>Registers the kinds of <paramref name="plugins"/>.</summary>
    /// <param name="logs">Where plugins, devices and the registry log.</param>
    /// <param name="plugins">Plugin entry points (their <see cref="IVismPlugin.Register"/> is called once).</param>
    /// <exception cref="ArgumentException">When two plugins register the same kind.</exception>
    public DirectComposer(ILoggerFactory logs, params IEnumerable<IVismPlugin> plugins)
    {
        ArgumentNullException.ThrowIfNull(logs);
        ArgumentNullException.ThrowIfNull(plugins);
        _logs = logs;
        var builder = new Builder(_kinds);
        foreach (IVismPlugin plugin in plugins)
            plugin.Register(builder);
    }

    /// <summary>Per-region vectors the <c>in-memory</c> transport offers (the in-repo transports'
    /// counts come from their options).</summary>
    public int InMemoryVectors { get; init; } = 4;

    /// <summary>Whether the <c>in-memory</c> transport kind is offered.</summary>
    public bool OfferInMemoryTransport { get; init; } = true;

    /// <summary>Adjusts every options object of type <typeparamref name="TOptions"/> after it is created
    /// (before the composer applies <see cref="HostSpec.MemoryCapacity"/> and validates it).</summary>
    /// <typeparam name="TOptions">A plugin's options type.</typeparam>
    /// <param name="configure">The adjustment.</param>
    /// <returns>This composer.</returns>
    public DirectComposer Configure<TOptions>(Action<TOptions> configure) where TOptions : class
    {
        ArgumentNullException.ThrowIfNull(configure);
        _configure.Add((typeof(TOptions), o => configure((TOptions)o)));
        return this;
    }

    /// <inheritdoc />
    public IReadOnlyList<string> Kinds(PluginKind kind)
    {
        IEnumerable<string> names = _kinds.Keys.Where(k => k.Item1 == kind).Select(k => k.Item2);
        if (kind == PluginKind.Transport && OfferInMemoryTransport)
            names = names.Append(DriverConnectors.InMemoryKind);
        return [.. names.Distinct().Order(StringComparer.Ordinal)];
    }

    /// <inheritdoc />
    public async Task<IComposition> ComposeAsync(Combination combination, HostSpec spec, CancellationToken cancellation)
    {
        ArgumentNullException.ThrowIfNull(combination);
        ArgumentNullException.ThrowIfNull(spec);
        ArgumentOutOfRangeException.ThrowIfLessThan(spec.Devices, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(spec.Devices, 8);
        bool inMemory = combination.Transport == DriverConnectors.InMemoryKind && OfferInMemoryTransport;
        Registration? transportKind = inMemory ? null : Find(PluginKind.Transport, combination.Transport);
        Registration memoryKind = Find(PluginKind.Memory, combination.Memory);
        Registration? eventsKind = combination.HasEvents ? Find(PluginKind.Events, combination.Events) : null;
        IDriverConnector connector = DriverConnectors.Find(combination.Transport, transportKind?.Implementation.Assembly)
            ?? throw new CompositionUnavailableException($"transport kind '{combination.Transport}' has no driver connector",
                "ship a public IDriverConnector (Vism.Driver) in the transport's plugin assembly");

        DirectoryInfo scratch = Directory.CreateTempSubdirectory("vism-c-");
        string state = spec.StateDirectory ?? Path.Combine(scratch.FullName, "state");
        var ism = new IsmHost(new IsmHostOptions { Sharing = spec.Sharing, StateDirectory = state }, _logs);
        var host = new HostDescription { Gid = ism.Gid, StateDirectory = state, SocketDirectory = scratch.FullName };
        Directory.CreateDirectory(host.StateDirectory);
        var loops = new LoopPool(Math.Min(spec.Devices, Environment.ProcessorCount), _logs);
        var composition = new Composition(ism, loops, scratch.FullName, _logs.CreateLogger<DirectComposer>());
        try
        {
            for (int i = 0; i < spec.Devices; i++)
            {
                cancellation.ThrowIfCancellationRequested();
                DeviceDescription description = DeviceLayout.Compute(spec.DeviceName(i), Virtio.IsmDeviceId,
                    spec.WindowSize, spec.RegionSize, spec.NotifySize);
                var part = new Part(description, loops.Next(), new DeviceCounters());
                composition.Parts.Add(part);
                object memoryOptions = Options(memoryKind, description, host, spec.MemoryCapacity, spec.Persist);
                object? eventsOptions = eventsKind is null ? null : Options(eventsKind, description, host, null);
                object? transportOptions = transportKind is null ? null : Options(transportKind, description, host, null);
                part.Services = Services(part, host, [memoryOptions, eventsOptions, transportOptions]);

                part.Memory = await Create<IMemoryBackend>(part, memoryKind).ConfigureAwait(false);
                ulong page = await part.Loop.InvokeAsync(() => part.Memory.PageSize).ConfigureAwait(false);
                if (page == 0 || description.RegionSize % page != 0)
                    throw new CompositionUnavailableException($"memory kind '{memoryKind.Name}' has {page}-byte pages; the {description.RegionSize}-byte regions are no multiple of them",
                        "use a memory kind with pages of at most 2 MiB");
                if (eventsKind is not null)
                    part.Events = await Create<IEventChannel>(part, eventsKind).ConfigureAwait(false);
                if (transportKind is not null)
                    part.Transport = await Create<ITransport>(part, transportKind).ConfigureAwait(false);
                part.Device = ism.AddDevice(description, part.Loop, part.Memory, part.Events, part.Counters);
                if (part.Transport is { } transport)
                {
                    IsmDevice device = part.Device;
                    await part.Loop.InvokeAsync(() => transport.Start(device)).ConfigureAwait(false);
                }
                composition.Devices.Add(new ComposedDevice(part.Device, connector, new DriverTarget
                {
                    TransportKind = combination.Transport,
                    Endpoint = part.Transport?.Endpoint ?? DriverConnectors.InMemoryKind,
                    Description = description,
                    VectorCount = part.Transport?.VectorCount ?? InMemoryVectors,
                    Device = part.Device,
                    Transport = part.Transport,
                }));
            }
            return composition;
        }
        catch
        {
            await composition.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    private Registration Find(PluginKind kind, string name)
    {
        if (_kinds.TryGetValue((kind, name), out Registration? registration))
            return registration;
        string installed = string.Join(", ", Kinds(kind));
        throw new CompositionUnavailableException($"{Describe(kind)} kind '{name}' is not installed (installed: {(installed.Length == 0 ? "none" : installed)})",
            $"add the plugin that provides '{name}' to the composer");
    }

    /// <summary>A new options object: defaults, then the configured adjustments, then the capacity, then validation.</summary>
    private object Options(Registration kind, DeviceDescription device, HostDescription host, ulong? capacity, bool persist = false)
    {
        object options = Activator.CreateInstance(kind.Options)
            ?? throw new InvalidOperationException($"{kind.Options.FullName} cannot be created");
        foreach ((Type type, Action<object> apply) in _configure)
            if (type.IsInstanceOfType(options))
                apply(options);
        if (capacity is ulong bytes)
            SetCapacity(kind, options, bytes);
        if (persist && kind.Kind == PluginKind.Memory)
            SetPersist(kind, options);
        if (options is IValidatableOptions validatable)
        {
            var context = new ValidationContext(device, host);
            validatable.Validate(context);
            if (context.Errors.Count > 0)
                throw new CompositionUnavailableException(
                    $"{Describe(kind.Kind)} kind '{kind.Name}' refuses its options here: {string.Join("; ", context.Errors)}",
                    "make the machine meet the plugin's requirements (see its README), or configure its options");
        }
        return options;
    }

    /// <summary>Where <see cref="HostSpec.Persist"/> puts a memory plugin's region files: relative, so inside the state directory.</summary>
    public const string PersistedDirectory = "persisted";

    /// <summary>Sets the memory plugin's <c>persist</c> option (a bool property named Persist) and
    /// its <c>directory</c> (a string property named Directory, when it has one) to <see cref="PersistedDirectory"/>.</summary>
    internal static void SetPersist(Registration kind, object options)
    {
        System.Reflection.PropertyInfo? persist = options.GetType().GetProperty("Persist");
        if (persist is null || persist.PropertyType != typeof(bool) || !persist.CanWrite)
            throw new CompositionUnavailableException($"memory kind '{kind.Name}' has no persist option",
                "give the memory plugin's options a `persist` (bool) setting to run the persistence checks") { NotApplicable = true };
        persist.SetValue(options, true);
        if (options.GetType().GetProperty("Directory") is { } directory && directory.PropertyType == typeof(string) && directory.CanWrite)
            directory.SetValue(options, PersistedDirectory);
    }

    /// <summary>Sets the memory plugin's <c>capacity</c> option (a <see cref="ulong"/> property named Capacity).</summary>
    internal static void SetCapacity(Registration kind, object options, ulong bytes)
    {
        System.Reflection.PropertyInfo? property = options.GetType().GetProperty("Capacity");
        if (property is null || property.PropertyType != typeof(ulong) || !property.CanWrite)
            throw new CompositionUnavailableException($"memory kind '{kind.Name}' has no capacity option",
                "give the memory plugin's options a `capacity` (bytes) setting to run capacity checks");
        property.SetValue(options, bytes);
    }

    private ServiceProvider Services(Part part, HostDescription host, object?[] options)
    {
        var services = new ServiceCollection();
        services.AddSingleton(_logs);
        services.AddSingleton(typeof(ILogger<>), typeof(Logger<>));
        services.AddSingleton(host);
        services.AddSingleton(part.Description);
        services.AddSingleton<IDeviceLoop>(part.Loop);
        services.AddSingleton<IDeviceCounters>(part.Counters);
        foreach (object? o in options)
            if (o is not null)
                services.AddSingleton(o.GetType(), o);
        return services.BuildServiceProvider();
    }

    private static async Task<T> Create<T>(Part part, Registration kind) where T : class
    {
        IServiceProvider services = part.Services ?? throw new InvalidOperationException("services are not set up");
        return await part.Loop.InvokeAsync(() => (T)ActivatorUtilities.CreateInstance(services, kind.Implementation)).ConfigureAwait(false);
    }

    private static string Describe(PluginKind kind) => kind.ToString().ToLowerInvariant();

    /// <summary>A registered kind.</summary>
    internal sealed record Registration(PluginKind Kind, string Name, Type Implementation, Type Options);

    private sealed class Builder(Dictionary<(PluginKind, string), Registration> kinds) : IVismPluginBuilder
    {
        public IVismPluginBuilder AddTransport<TTransport, TOptions>(string kind, string summary)
            where TTransport : class, ITransport where TOptions : class, new() => Add(PluginKind.Transport, kind, typeof(TTransport), typeof(TOptions));

        public IVismPluginBuilder AddMemory<TBackend, TOptions>(string kind, string summary)
            where TBackend : class, IMemoryBackend where TOptions : class, new() => Add(PluginKind.Memory, kind, typeof(TBackend), typeof(TOptions));

        public IVismPluginBuilder AddEvents<TChannel, TOptions>(string kind, string summary)
            where TChannel : class, IEventChannel where TOptions : class, new() => Add(PluginKind.Events, kind, typeof(TChannel), typeof(TOptions));

        private Builder Add(PluginKind kind, string name, Type implementation, Type options)
        {
            if (!kinds.TryAdd((kind, name), new Registration(kind, name, implementation, options)))
                throw new ArgumentException($"{Describe(kind)} kind '{name}' is registered twice");
            return this;
        }
    }

    private sealed class ValidationContext(DeviceDescription device, HostDescription host) : OptionsValidationContext
    {
        public List<string> Errors { get; } = [];

        public override DeviceDescription Device => device;

        public override HostDescription Host => host;

        public override void Error(string key, string message) => Errors.Add($"{key}: {message}");

        public override void DeviceError(string key, string message) => Errors.Add($"device {key}: {message}");

        public override void ClaimEndpoint(string key, string endpoint)
        {
        }
    }

    /// <summary>One device's plugin instances while they are created and until they are disposed.</summary>
    private sealed class Part(DeviceDescription description, EventLoop loop, DeviceCounters counters)
    {
        public DeviceDescription Description { get; } = description;
        public EventLoop Loop { get; } = loop;
        public DeviceCounters Counters { get; } = counters;
        public ServiceProvider? Services { get; set; }
        public IMemoryBackend? Memory { get; set; }
        public IEventChannel? Events { get; set; }
        public ITransport? Transport { get; set; }
        public IsmDevice? Device { get; set; }
    }

    private sealed class Composition(IsmHost host, LoopPool loops, string scratch, ILogger log) : IComposition
    {
        private bool _disposed;

        public List<Part> Parts { get; } = [];

        public List<ComposedDevice> Devices { get; } = [];

        public IsmHost Host => host;

        IReadOnlyList<ComposedDevice> IComposition.Devices => Devices;

        /// <summary>Stops everything in reverse order of start, as the host does; failures are logged.</summary>
        public async ValueTask DisposeAsync()
        {
            if (_disposed) return;
            _disposed = true;
            for (int i = Parts.Count - 1; i >= 0; i--)
            {
                Part p = Parts[i];
                if (p.Transport is { } transport)
                    await Quietly(p, "stopping its transport", () => p.Loop.InvokeAsync(async () => { await transport.DisposeAsync().ConfigureAwait(true); return true; })).ConfigureAwait(false);
                if (p.Device is { } device)
                    await Quietly(p, "removing it", () => { host.RemoveDevice(device); return Task.CompletedTask; }).ConfigureAwait(false);
                if (p.Events is { } events)
                    await Quietly(p, "disposing its events", () => p.Loop.InvokeAsync(events.Dispose)).ConfigureAwait(false);
                if (p.Memory is { } memory)
                    await Quietly(p, "disposing its memory", () => p.Loop.InvokeAsync(memory.Dispose)).ConfigureAwait(false);
                if (p.Services is { } services)
                    await Quietly(p, "disposing its services", () => services.DisposeAsync().AsTask()).ConfigureAwait(false);
            }
            host.Dispose();
            loops.Dispose();
            try
            {
                Directory.Delete(scratch, recursive: true);
            }
            catch (IOException ex)
            {
                log.LogWarning("cannot remove {Scratch}: {Error}", scratch, ex.Message);
            }
        }

        private async Task Quietly(Part part, string what, Func<Task> action)
        {
            try
            {
                await action().ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                log.LogError(ex, "device {Name}: {What} failed", part.Description.Name, what);
            }
        }
    }
}
