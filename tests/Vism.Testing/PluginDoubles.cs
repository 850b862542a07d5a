using System.Diagnostics.CodeAnalysis;
using Vism.Abstractions;

namespace Vism.Testing;

/// <summary>Records what a plugin's <see cref="IVismPlugin.Register"/> registers, by kind.</summary>
public sealed class RecordingPluginBuilder : IVismPluginBuilder
{
    /// <summary>Registrations: kind, plugin kind, implementation type, options type.</summary>
    public List<(string Kind, PluginKind PluginKind, Type Implementation, Type Options)> Registrations { get; } = [];

    /// <inheritdoc />
    public IVismPluginBuilder AddTransport<[DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.PublicConstructors)] TTransport,
        [DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.All)] TOptions>(string kind, string summary)
        where TTransport : class, ITransport where TOptions : class, new() =>
        Add(kind, PluginKind.Transport, typeof(TTransport), typeof(TOptions));

    /// <inheritdoc />
    public IVismPluginBuilder AddMemory<[DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.PublicConstructors)] TBackend,
        [DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.All)] TOptions>(string kind, string summary)
        where TBackend : class, IMemoryBackend where TOptions : class, new() =>
        Add(kind, PluginKind.Memory, typeof(TBackend), typeof(TOptions));

    /// <inheritdoc />
    public IVismPluginBuilder AddEvents<[DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.PublicConstructors)] TChannel,
        [DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.All)] TOptions>(string kind, string summary)
        where TChannel : class, IEventChannel where TOptions : class, new() =>
        Add(kind, PluginKind.Events, typeof(TChannel), typeof(TOptions));

    private RecordingPluginBuilder Add(string kind, PluginKind pluginKind, Type implementation, Type options)
    {
        Registrations.Add((kind, pluginKind, implementation, options));
        return this;
    }
}

/// <summary>Collects what an options class reports from <see cref="IValidatableOptions.Validate"/>.</summary>
/// <param name="device">The device being validated.</param>
/// <param name="host">The host; null = one with /var/lib/vism and /run/vism.</param>
public sealed class RecordingValidationContext(DeviceDescription device, HostDescription? host = null) : OptionsValidationContext
{
    /// <summary>Errors on the plugin's keys, and on device keys prefixed with <c>device.</c>.</summary>
    public List<(string Key, string Message)> Errors { get; } = [];

    /// <summary>Endpoints claimed.</summary>
    public List<string> Endpoints { get; } = [];

    /// <inheritdoc />
    public override DeviceDescription Device { get; } = device;

    /// <inheritdoc />
    public override HostDescription Host { get; } = host ?? new() { Gid = 1, StateDirectory = "/var/lib/vism", SocketDirectory = "/run/vism" };

    /// <inheritdoc />
    public override void Error(string key, string message) => Errors.Add((key, message));

    /// <inheritdoc />
    public override void DeviceError(string key, string message) => Errors.Add(("device." + key, message));

    /// <inheritdoc />
    public override void ClaimEndpoint(string key, string endpoint) => Endpoints.Add(endpoint);
}
