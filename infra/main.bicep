// Automate365 Connections service: everything it runs on, in one resource group.
// `azd up` provisions this template with infra/main.parameters.json and deploys the app to it.
targetScope = 'subscription'

// --- Environment -------------------------------------------------------------------------------

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; names the resource group and seeds the resource names.')
param environmentName string

@minLength(1)
@description('Azure region of every resource; it must offer the Flex Consumption plan.')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Name of the resource group; empty: rg-<environment name>.')
param resourceGroupName string = ''

// --- Hosting -----------------------------------------------------------------------------------

@description('Memory of each function app instance, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Most instances the function app scales out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Replication of the storage account.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param storageSkuName string = 'Standard_GRS'

@description('Days the Log Analytics workspace keeps logs.')
@minValue(30)
@maxValue(730)
param logRetentionInDays int = 30

// --- Key Vault ---------------------------------------------------------------------------------

@description('Purge protection on the vault (keep it on in production; it cannot be turned off again).')
param keyVaultPurgeProtection bool = true

@description('Days a deleted vault or secret stays recoverable; fixed once the vault exists (a provision with another value fails).')
@minValue(7)
@maxValue(90)
param keyVaultSoftDeleteRetentionInDays int = 90

@description('Public network access to the vault; Disabled needs a private endpoint and VNet integration, which this template does not create.')
@allowed([
  'Enabled'
  'Disabled'
])
param keyVaultPublicNetworkAccess string = 'Enabled'

@description('Days from this deployment to the expiry date of the secrets it writes. Key Vault\'s expiry is informational: the secret stays readable after it (see the README). A new deployment that writes them again sets a new date.')
@minValue(1)
@maxValue(730)
param secretLifetimeInDays int = 365

@description('Time of this deployment; only used to compute the expiry of the secrets written.')
param deploymentTime string = utcNow()

// --- What the app does -------------------------------------------------------------------------

@description('NCRONTAB schedule of the renewal sweep.')
param renewalSchedule string = '0 */5 * * * *'

@description('Host suffixes of the ServiceNow instances the service may call, comma-separated.')
param allowedInstanceSuffixes string = '.service-now.com,.servicenowservices.com'

@description('Where notices are POSTed; empty: no webhook.')
param notifyWebhookUrl string = ''

@description('HMAC-SHA256 key of the notice webhook; written to Key Vault when given, else the secret already in the vault is used.')
@secure()
param notifyWebhookSecret string = ''

@description('Where trigger events are POSTed (the Automate365 engine); empty: events wait in the queue and then its poison queue.')
param eventsWebhookUrl string = ''

@description('HMAC-SHA256 key of the events webhook; written to Key Vault when given, else the secret already in the vault is used.')
@secure()
param eventsWebhookSecret string = ''

@description('NCRONTAB schedule of the trigger dispatch.')
param triggerSchedule string = '*/30 * * * * *'

@description('Tables a trigger may watch (comma-separated).')
param triggerTables string = 'incident,sc_req_item,sc_request,change_request,sc_task,problem'

@description('Seconds each trigger poll re-reads, to catch changes that become visible late.')
@minValue(0)
@maxValue(3600)
param triggerLookbackSeconds int = 120

@description('Polls of one connection\'s triggers at once.')
@minValue(1)
@maxValue(16)
param triggerMaxPollsPerConnection int = 2

@description('Days a trigger\'s events are kept.')
@minValue(1)
@maxValue(90)
param eventRetentionDays int = 7

@description('Entra ID tenant of the Microsoft Graph mail app; empty: no e-mail.')
param graphTenantId string = ''

@description('Client id of the Microsoft Graph mail app (Mail.Send application permission).')
param graphClientId string = ''

@description('Mailbox the notices are sent from.')
param graphSender string = ''

@description('Client secret of the Microsoft Graph mail app; written to Key Vault when given, else the secret already in the vault is used.')
@secure()
param graphClientSecret string = ''

@description('Entra ID authority host for Microsoft Graph tokens.')
param graphAuthorityHost string = 'https://login.microsoftonline.com'

@description('Microsoft Graph endpoint.')
param graphApiUrl string = 'https://graph.microsoft.com'

@description('How often an API-token connection is checked, in minutes.')
param apiTokenCheckIntervalMinutes int = 360

@description('Days before an API token expires on which a reminder is sent, comma-separated.')
param expiryReminderDays string = '14,3,1'

@description('Minutes an instance may stay unreachable before the connection is marked unreachable.')
param unreachableAfterMinutes int = 60

@description('Least time, in minutes, before an OAuth token expires at which it is renewed.')
param renewalMarginMinutes int = 10

@description('Connections the renewal sweep works on at once.')
param renewalConcurrency int = 16

@description('Most connections one renewal sweep takes.')
param renewalBatchLimit int = 5000

@description('Seconds ahead of now that the renewal sweep looks for work: the schedule\'s interval, so consecutive sweeps\' windows touch.')
param renewalLookaheadSeconds int = 300

@description('Instance path prefixes the proxy calls (comma-separated, whole segments).')
param proxyAllowedPaths string = 'api/now/table/,api/now/attachment,api/sn_sc/servicecatalog/,api/sn_chg_rest/,api/now/import/'

@description('Longest Retry-After a proxied GET, PUT or DELETE waits out before its one retry, in seconds.')
@minValue(0)
@maxValue(60)
param proxyMaxRetryWaitSeconds int = 5

@description('Seconds a proxied call waits for the instance (under the 230 s the front end allows an HTTP request).')
@minValue(1)
@maxValue(200)
param proxyTimeoutSeconds int = 60

@description('Largest instance answer the proxy relays, in bytes.')
@minValue(1024)
param proxyMaxResponseBytes int = 20971520

@description('Days the record of proxied calls is kept.')
@minValue(1)
@maxValue(365)
param proxyAuditDays int = 30

@description('Pages of 25 secrets the orphaned-secret cleanup reads per run (every 15 minutes).')
@minValue(1)
@maxValue(400)
param secretCleanupPages int = 20

// --- Names -------------------------------------------------------------------------------------

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
  application: 'automate365-connections'
}
var functionAppName = 'func-a365conn-${resourceToken}'
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}-${take(resourceToken, 7)}'
var notifyWebhookSecretName = 'app-notify-webhook-secret'
var eventsWebhookSecretName = 'app-events-webhook-secret'
var graphClientSecretName = 'app-graph-client-secret'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : 'rg-${environmentName}'
  location: location
  tags: tags
}

// --- Resources ---------------------------------------------------------------------------------

module identity 'core/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-a365conn-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'core/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    skuName: storageSkuName
    deploymentContainerName: deploymentContainerName
  }
}

module monitoring 'core/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
    location: location
    tags: tags
    retentionInDays: logRetentionInDays
  }
}

module keyVault 'core/key-vault.bicep' = {
  name: 'key-vault'
  scope: rg
  params: {
    name: 'kv-${resourceToken}'
    location: location
    tags: tags
    enablePurgeProtection: keyVaultPurgeProtection
    softDeleteRetentionInDays: keyVaultSoftDeleteRetentionInDays
    publicNetworkAccess: keyVaultPublicNetworkAccess
    workspaceId: monitoring.outputs.workspaceId
    notifyWebhookSecretName: notifyWebhookSecretName
    notifyWebhookSecret: notifyWebhookSecret
    eventsWebhookSecretName: eventsWebhookSecretName
    eventsWebhookSecret: eventsWebhookSecret
    graphClientSecretName: graphClientSecretName
    graphClientSecret: graphClientSecret
    secretExpiry: dateTimeToEpoch(dateTimeAdd(deploymentTime, 'P${secretLifetimeInDays}D'))
  }
}

module roleAssignments 'core/role-assignments.bicep' = {
  name: 'role-assignments'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
  }
}

module functionApp 'app/function-app.bicep' = {
  name: 'function-app'
  scope: rg
  // The identity holds its roles before the app first starts and resolves its references.
  dependsOn: [
    roleAssignments
  ]
  params: {
    name: functionAppName
    planName: 'plan-${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    applicationInsightsConnectionString: monitoring.outputs.applicationInsightsConnectionString
    pythonVersion: '3.11'
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    // Every setting the code reads (README "Settings"); secrets only as Key Vault references.
    // ALLOW_LOCAL_INSTANCES is for the local run and tests only and is never set here.
    serviceSettings: {
      KEY_VAULT_URL: keyVault.outputs.uri
      RENEWAL_SCHEDULE: renewalSchedule
      ALLOWED_INSTANCE_SUFFIXES: allowedInstanceSuffixes
      NOTIFY_WEBHOOK_URL: notifyWebhookUrl
      NOTIFY_WEBHOOK_SECRET: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.notifyWebhookKeyUri})'
      GRAPH_TENANT_ID: graphTenantId
      GRAPH_CLIENT_ID: graphClientId
      GRAPH_CLIENT_SECRET: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.graphCredentialUri})'
      GRAPH_SENDER: graphSender
      GRAPH_AUTHORITY_HOST: graphAuthorityHost
      GRAPH_API_URL: graphApiUrl
      API_TOKEN_CHECK_INTERVAL_MINUTES: string(apiTokenCheckIntervalMinutes)
      EXPIRY_REMINDER_DAYS: expiryReminderDays
      UNREACHABLE_AFTER_MINUTES: string(unreachableAfterMinutes)
      RENEWAL_MARGIN_MINUTES: string(renewalMarginMinutes)
      RENEWAL_CONCURRENCY: string(renewalConcurrency)
      RENEWAL_BATCH_LIMIT: string(renewalBatchLimit)
      RENEWAL_LOOKAHEAD_SECONDS: string(renewalLookaheadSeconds)
      PROXY_ALLOWED_PATHS: proxyAllowedPaths
      PROXY_MAX_RETRY_WAIT_SECONDS: string(proxyMaxRetryWaitSeconds)
      PROXY_TIMEOUT_SECONDS: string(proxyTimeoutSeconds)
      PROXY_MAX_RESPONSE_BYTES: string(proxyMaxResponseBytes)
      PROXY_AUDIT_DAYS: string(proxyAuditDays)
      SECRET_CLEANUP_PAGES: string(secretCleanupPages)
      TRIGGER_SCHEDULE: triggerSchedule
      TRIGGER_TABLES: triggerTables
      TRIGGER_LOOKBACK_SECONDS: string(triggerLookbackSeconds)
      TRIGGER_MAX_POLLS_PER_CONNECTION: string(triggerMaxPollsPerConnection)
      EVENT_RETENTION_DAYS: string(eventRetentionDays)
      EVENTS_WEBHOOK_URL: eventsWebhookUrl
      EVENTS_WEBHOOK_SECRET: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.eventsWebhookKeyUri})'
    }
  }
}

// --- Outputs (azd writes them to .azure/<environment>/.env; none is a key or secret) ----------

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_FUNCTION_APP_URL string = functionApp.outputs.uri
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_KEY_VAULT_ENDPOINT string = keyVault.outputs.uri
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
