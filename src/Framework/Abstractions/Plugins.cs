using System.Diagnostics.CodeAnalysis;

namespace Vism.Abstractions;

/// <summary>The version of this plugin contract. A plugin records the version it was built
/// against with <see cref="VismPluginAttribute"/>; the host refuses a plugin of another version.</summary>
public static class VismContract
{
    /// <summary>The contract version of this Abstractions assembly.</summary>
    public const int Version = 1;
}

/// <summary>Marks an assembly as a vism plugin: <c>[assembly: VismPlugin(VismContract.Version)]</c>.
/// The constant is compiled into the plugin, so the host learns which contract it was built against.</summary>
/// <param name="contractVersion">Pass <see cref="VismContract.Version"/>.</param>
[AttributeUsage(AttributeTargets.Assembly, AllowMultiple = false)]
public sealed class VismPluginAttribute(int contractVersion) : Attribute
{
    /// <summary>The contract version the plugin was compiled against.</summary>
    public int ContractVersion { get; } = contractVersion;
}

/// <summary>The three kinds of plugin a device is composed of.</summary>
public enum PluginKind
{
    /// <summary>A transport (<see cref="ITransport"/>), from <c>[device.transport]</c>.</summary>
    Transport,

    /// <summary>A memory backend (<see cref="IMemoryBackend"/>), from <c>[device.memory]</c>.</summary>
    Memory,

    /// <summary>An event channel (<see cref="IEventChannel"/>), from <c>[device.events]</c>.</summary>
    Events,
}

/// <summary>
/// A plugin's entry point. The host creates every public non-abstract class implementing this
/// interface in a plugin assembly (parameterless constructor) and calls <see cref="Register"/> once.
/// </summary>
public interface IVismPlugin
{
    /// <summary>Registers the kinds this plugin provides.</summary>
    /// <param name="builder">The registrar.</param>
    void Register(IVismPluginBuilder builder);
}

/// <summary>
/// Registers plugin kinds by name. For each device the host creates the implementation through
/// dependency injection, with these services available to its constructor: the options object
/// (bound from the TOML section, validated), <see cref="DeviceDescription"/>,
/// <see cref="HostDescription"/>, the device's <see cref="IDeviceLoop"/>, <see cref="IDeviceCounters"/>,
/// <c>ILogger&lt;T&gt;</c> and <c>ILoggerFactory</c>.
/// </summary>
public interface IVismPluginBuilder
{
    /// <summary>Registers a transport.</summary>
    /// <typeparam name="TTransport">The implementation.</typeparam>
    /// <typeparam name="TOptions">Its options; public settable properties bind to kebab-case TOML keys.</typeparam>
    /// <param name="kind">The <c>kind</c> value that selects it, e.g. <c>vhost-user</c>.</param>
    /// <param name="summary">One line for <c>vism plugins</c>.</param>
    /// <returns>The builder.</returns>
    IVismPluginBuilder AddTransport<[DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.PublicConstructors)] TTransport,
        [DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.All)] TOptions>(string kind, string summary)
        where TTransport : class, ITransport where TOptions : class, new();

    /// <summary>Registers a memory backend.</summary>
    /// <typeparam name="TBackend">The implementation.</typeparam>
    /// <typeparam name="TOptions">Its options; public settable properties bind to kebab-case TOML keys.</typeparam>
    /// <param name="kind">The <c>kind</c> value that selects it, e.g. <c>file</c>.</param>
    /// <param name="summary">One line for <c>vism plugins</c>.</param>
    /// <returns>The builder.</returns>
    IVismPluginBuilder AddMemory<[DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.PublicConstructors)] TBackend,
        [DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.All)] TOptions>(string kind, string summary)
        where TBackend : class, IMemoryBackend where TOptions : class, new();

    /// <summary>Registers an event channel.</summary>
    /// <typeparam name="TChannel">The implementation.</typeparam>
    /// <typeparam name="TOptions">Its options; public settable properties bind to kebab-case TOML keys.</typeparam>
    /// <param name="kind">The <c>kind</c> value that selects it, e.g. <c>vq</c>.</param>
    /// <param name="summary">One line for <c>vism plugins</c>.</param>
    /// <returns>The builder.</returns>
    IVismPluginBuilder AddEvents<[DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.PublicConstructors)] TChannel,
        [DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.All)] TOptions>(string kind, string summary)
        where TChannel : class, IEventChannel where TOptions : class, new();
}

/// <summary>
/// Options that check themselves after binding and before anything starts. Property-level
/// documentation for <c>vism plugins</c> comes from <see cref="System.ComponentModel.DescriptionAttribute"/>.
/// </summary>
public interface IValidatableOptions
{
    /// <summary>Reports every problem through <paramref name="context"/>; must not throw or start anything.</summary>
    /// <param name="context">Where errors go, and what is known about the device.</param>
    void Validate(OptionsValidationContext context);
}

/// <summary>
/// Options of a transport that carries per-region interrupt vectors (VIRTIO_ISM_F_EVENT_IRQ, see
/// docs/conformance.md "Vector numbering"). An events plugin that delivers updates on vectors reads
/// it from <see cref="OptionsValidationContext.TransportOptions"/> to refuse a device whose
/// transport could not deliver them, and to warn where a guest cannot tell them apart.
/// </summary>
public interface IVectorTransportOptions
{
    /// <summary>How many vectors the transport will offer a device whose events plugin uses them
    /// (<see cref="ITransport.VectorCount"/> once started). Zero: none, EVENT_IRQ cannot work.</summary>
    int EventVectors { get; }

    /// <summary>Null when the vectors reach a guest as interrupts it can tell apart; otherwise what a
    /// guest sees instead (for <c>vism validate</c> to warn with).</summary>
    string? GuestVectorLimitation { get; }
}

/// <summary>Collects validation errors for one plugin section; the host adds file, line and column.</summary>
public abstract class OptionsValidationContext
{
    /// <summary>The options of the device's transport, already validated, while an events plugin's
    /// options are validated (transports are validated first); null otherwise, or where the host
    /// does not say.</summary>
    public virtual object? TransportOptions => null;

    /// <summary>Reports something that will work but probably not as the user expects, on
    /// <paramref name="key"/> of this plugin's section; <c>vism validate</c> and <c>vism run</c>
    /// print it, and the config stays valid. The default ignores it.</summary>
    /// <param name="key">The key inside the plugin's section.</param>
    /// <param name="message">What will happen and what to do about it.</param>
    public virtual void Warning(string key, string message)
    {
    }

    /// <summary>The device being validated.</summary>
    public abstract DeviceDescription Device { get; }

    /// <summary>The host being validated.</summary>
    public abstract HostDescription Host { get; }

    /// <summary>Reports an error on <paramref name="key"/> of this plugin's section (kebab-case TOML key).</summary>
    /// <param name="key">The key inside the plugin's section.</param>
    /// <param name="message">What is wrong and what would be right.</param>
    public abstract void Error(string key, string message);

    /// <summary>Reports an error on a key of the enclosing <c>[[device]]</c> table, such as <c>region-size</c>.</summary>
    /// <param name="key">The device-level key.</param>
    /// <param name="message">What is wrong and what would be right.</param>
    public abstract void DeviceError(string key, string message);

    /// <summary>Declares that this device will serve <paramref name="endpoint"/> (a socket path),
    /// so the host can report two devices claiming the same one.</summary>
    /// <param name="key">The key the endpoint came from.</param>
    /// <param name="endpoint">The endpoint, normalised (absolute path).</param>
    public abstract void ClaimEndpoint(string key, string endpoint);

    /// <summary>Longest Unix socket path, in bytes: <c>sockaddr_un.sun_path</c> holds 108 with the
    /// terminating NUL.</summary>
    public const int MaxSocketPathBytes = 107;

    /// <summary>Claims <paramref name="path"/> as a Unix socket this device will listen on
    /// (<see cref="ClaimEndpoint"/>) after checking that it fits a socket address; a path that does
    /// not is an error on <paramref name="key"/> instead.</summary>
    /// <param name="key">The key the path came from.</param>
    /// <param name="path">The socket path, normalised (absolute).</param>
    /// <returns>Whether the path was claimed.</returns>
    public bool ClaimSocketPath(string key, string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        int bytes = System.Text.Encoding.UTF8.GetByteCount(path);
        if (bytes > MaxSocketPathBytes)
        {
            Error(key, $"the socket path {path} is {bytes} bytes; a Unix socket path holds at most {MaxSocketPathBytes}");
            return false;
        }
        ClaimEndpoint(key, path);
        return true;
    }
}
